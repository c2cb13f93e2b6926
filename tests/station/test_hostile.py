"""A running station (edge-run, separate processes, real sockets) against buggy and hostile peers.

Each test sends what a broken or malicious client sends to one of the station's endpoints, and
checks that no process dies or restarts, that every good frame and every triggered part still
gets exactly one verdict, and that the hostile message was counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import zmq
from station_kit import (
    STATION,
    Line,
    child_pid,
    peak_rss_mb,
    start_station,
    station_config,
    stop_station,
    subscribed,
    wait_for_worker,
)

from edge.client import Subscriber, request
from edge.protocol import (
    FrameHeader,
    Query,
    Verdict,
    VerdictMessage,
    decode_reply,
    encode_control,
    encode_frame,
    encode_query,
    encode_result,
    encode_trigger,
    encode_verdict,
)

PROCESSES = ("edge.services.publisher", "edge.services.worker", "edge.services.capture")


class Station:
    """edge-run on ipc endpoints in `folder`, with the test as the hostile peer on each of them."""

    def __init__(self, folder: Path, bank: Path) -> None:
        self.folder = folder
        self.process = start_station(station_config(folder, bank, publisher={"startup_hold_s": 0.3}))
        self.context = zmq.Context()
        self.line = Line(self.context, folder)
        self.line.wait_for_publisher()
        wait_for_worker(self.endpoint("control"))
        self.pids = self.children()
        self.frames = self.context.socket(zmq.PUSH)  # a capture of our own, and a rogue one
        self.frames.connect(self.endpoint("frames"))
        self.seq = 0

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.folder}/{name}"

    def children(self) -> dict[str, int | None]:
        return {module: child_pid(self.process.pid, module) for module in PROCESSES}

    def frame(self, frame_id: str, pixels: np.ndarray, camera: str = "cam0", **header: object) -> list:
        fields = dict(
            station=STATION,
            camera=camera,
            seq=self.seq,
            frame_id=frame_id,
            capture_utc="2026-12-01T00:00:00Z",
            capture_monotonic_ns=time.monotonic_ns(),
            height=pixels.shape[0],
            width=pixels.shape[1],
            channels=1 if pixels.ndim == 2 else 3,
            pixel_type=str(pixels.dtype),
        )
        self.seq += 1
        return [bytes(p) for p in encode_frame(FrameHeader(**fields), pixels)]

    def stop(self) -> str:
        code, output = stop_station(self.process)
        self.context.destroy(linger=0)
        assert code == 0, output
        return output


@pytest.fixture(scope="module")
def station(tmp_path_factory, bank_store):
    running = Station(tmp_path_factory.mktemp("hostile"), bank_store.root)
    yield running
    output = running.stop()
    assert "Traceback" not in output, output
    assert "restarting it" not in output, output  # no process died and was restarted


def verdict_subscriber(station) -> Subscriber:
    """A subscriber whose subscription has reached the station's publisher (a heartbeat came)."""
    subscriber = Subscriber(
        station.endpoint("pub"), STATION, topics=("verdict", "heartbeat"), context=station.context
    )
    subscribed(subscriber)
    return subscriber


def verdicts_by_frame(subscriber: Subscriber, frame_ids: set[str], timeout_s: float) -> dict[str, list]:
    found: dict[str, list] = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not frame_ids <= set(found):
        event = subscriber.receive(0.2)
        if event is not None and event.verdict is not None:
            found[event.verdict.frame_id].append(event.verdict)
    end = time.monotonic() + 0.5  # a second verdict would come now
    while (remaining := end - time.monotonic()) > 0:
        event = subscriber.receive(remaining)
        if event is not None and event.verdict is not None:
            found[event.verdict.frame_id].append(event.verdict)
    return found


def good_pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(90, 110, (160, 160, 3), dtype=np.uint8)


def raw_frame(header: dict, payload: bytes) -> list[bytes]:
    return [b"frame", json.dumps(header).encode(), payload]


def test_requests_of_any_shape_are_answered_and_kill_nothing(station):
    """Two-part, empty, binary and oversized requests to the publisher's query endpoint and the
    worker's control endpoint: each gets an error reply, and both keep answering real requests."""
    hostile = [
        [b'{"camera": "cam0"}', b"second part"],
        [b"", b"", b""],
        [b"\xff\xfe garbage"],
        [b'{"schema": 3, "camera": "cam0", "epoch": 1}'],
        [b'{"schema": 3, "command": "shutdown"}'],
        [json.dumps({"schema": 3, "camera": "x" * 60_000}).encode()],
    ]
    for name in ("latest", "control"):
        for _ in range(3):  # six two-part requests a minute took the whole station down
            for parts in hostile:
                reply = request(station.endpoint(name), parts, timeout_s=5, context=station.context)
                assert reply is not None and reply["ok"] is False and reply["kind"], (name, parts[:1])
    for name in ("latest", "control"):  # over the 64 KiB cap: the sender is cut off, unanswered
        oversized = [json.dumps({"schema": 3, "camera": "x" * 100_000}).encode()]
        assert request(station.endpoint(name), oversized, timeout_s=1, context=station.context) is None
    status = request(station.endpoint("control"), encode_control("status"), 5, station.context)
    assert status["ok"] and status["bank_version"] == "v0001"
    latest = request(station.endpoint("latest"), encode_query(Query("cam0")), 5, station.context)
    assert latest["ok"] is True and "epoch" in latest
    # a DEALER speaks to REP sockets without the REQ envelope rules
    dealer = station.context.socket(zmq.DEALER)
    dealer.connect(station.endpoint("latest"))
    dealer.send_multipart([b"no empty delimiter", b"x"])
    dealer.send_multipart([b"", b'{"schema": 3, "camera": "cam0"}'])
    assert dealer.poll(5000)
    assert decode_reply(dealer.recv_multipart()[1:])["ok"] is True
    dealer.close(linger=0)
    assert station.children() == station.pids


def test_hostile_frames_get_error_verdicts_and_good_frames_all_pass(station):
    """Unhashable and wrong-typed headers, a non-ASCII or dotted camera, schema `true`, shapes
    whose work would be unbounded, a uint16 frame: interleaved with good frames on one socket."""
    subscriber = verdict_subscriber(station)
    good = good_pixels()
    base = json.loads(station.frame("template", good)[1])
    expected: dict[str, set[Verdict]] = {}
    scored = {Verdict.OK, Verdict.NOK}
    for i in range(6):
        station.frames.send_multipart(station.frame(f"good-{i}", good))
        expected[f"good-{i}"] = scored
        hostile = [
            ({"pixel_type": []}, good.tobytes()),
            ({"pixel_type": {}}, good.tobytes()),
            ({"camera": "κάμερα"}, good.tobytes()),
            ({"camera": "line1.cam0"}, good.tobytes()),
            ({"schema": True}, good.tobytes()),
            ({"schema": 3.0}, good.tobytes()),
            ({"height": 1, "width": 20_000, "channels": 1}, bytes(20_000)),
            ({"height": 1, "width": 100_000, "channels": 1}, bytes(100_000)),
            ({"height": 2**31, "width": 2**31}, b"x"),
            ({"seq": -1}, good.tobytes()),
        ]
        for number, (change, payload) in enumerate(hostile):
            frame_id = f"bad-{i}-{number}"
            station.frames.send_multipart(raw_frame({**base, "frame_id": frame_id, **change}, payload))
            expected[frame_id] = {Verdict.ERROR}
        station.frames.send_multipart([b"frame", b"{", b""])  # names no frame: counted, not answered
        u16 = (good.astype(np.uint16) << 8) | 0x55
        station.frames.send_multipart(station.frame(f"u16-{i}", u16))
        expected[f"u16-{i}"] = scored
    found = verdicts_by_frame(subscriber, set(expected), timeout_s=60)
    subscriber.close()
    assert {f: len(v) for f, v in found.items() if len(v) != 1} == {}
    assert set(found) == set(expected)
    wrong = {f: v[0].verdict for f, v in found.items() if v[0].verdict not in expected[f]}
    assert wrong == {}
    refused = found["bad-0-6"][0].error
    assert "shape" in refused and "32:1" in refused, refused
    assert station.children() == station.pids


def test_results_are_typed_and_a_rogue_worker_cannot_take_the_publisher_down(station):
    """What a buggy worker could push to the publisher: wrong types, NaN, negative areas, a mask
    that is not a PNG, unhashable ids, another station. None is published; a good result after
    them is."""
    subscriber = verdict_subscriber(station)
    rogue = station.context.socket(zmq.PUSH)
    rogue.connect(station.endpoint("results"))
    good = VerdictMessage(STATION, "cam0", "rogue-good", Verdict.OK, "t", 1, score=1.0, threshold=2.0)
    topic, body = encode_verdict(good)
    raw = json.loads(body)
    bad_bodies = [
        {**raw, "frame_id": "r1", "score": "high"},
        {**raw, "frame_id": "r2", "defect_area_px": -5},
        {**raw, "frame_id": ["r3"]},
        {**raw, "frame_id": "r4", "camera": {"c": 1}},
        {**raw, "frame_id": "r5", "station": "another"},
        {**raw, "frame_id": "r6", "has_mask": True},
    ]
    for bad in bad_bodies:
        rogue.send_multipart([topic, json.dumps(bad).encode(), b"not a png" if bad.get("has_mask") else b""])
    rogue.send_multipart([topic, body.replace(b'"score":1.0', b'"score":NaN'), b""])
    rogue.send_multipart([topic, body])  # two parts: no mask part
    rogue.send_multipart([b"expect", b"{}"])
    state = {"state": "streaming", "since_utc": "2026-12-07T10:00:00+00:00"}
    for report in (
        {},
        {"station": STATION, "camera": "cam0", "state": {**state, "state": "exploded"}},
        {"station": STATION, "camera": "cam0", "state": {**state, "extra": 1}},
        {"station": STATION, "camera": "cam0", "state": {**state, "width": -1}},
        {"station": STATION, "camera": "cam0", "state": [state]},
        {"station": "another", "camera": "cam0", "state": state},
        {"station": STATION, "camera": "cam9", "state": state},  # not a camera of this station
    ):  # camera reports a buggy capture could send: refused, and the heartbeats stay valid
        rogue.send_multipart([b"camera", json.dumps({"schema": 3, **report}).encode()])
    rogue.send_multipart(encode_result(good, None))
    found = verdicts_by_frame(subscriber, {"rogue-good"}, timeout_s=10)
    rogue.close(linger=0)
    subscriber.close()
    assert set(found) == {"rogue-good"} and len(found["rogue-good"]) == 1
    assert station.children() == station.pids


def test_worker_memory_stays_bounded_whatever_the_headers_say(station):
    """The largest frames the protocol admits (64 MiB of pixels: 8192 x 8192 mono, 4729 x 4729
    RGB, 5792 x 5792 uint16), several at once, and shapes whose scaling would be unbounded."""
    subscriber = verdict_subscriber(station)
    worker = station.pids["edge.services.worker"]
    frames = {
        "mono8k": np.full((8192, 8192), 100, np.uint8),
        "rgb": np.full((4729, 4729, 3), 100, np.uint8),
        "big16": np.full((5792, 5792), 100 << 8, np.uint16),
        "long": np.full((64, 2048), 100, np.uint8),  # 32:1, the longest scored whole
        "wide": np.full((1, 65536), 100, np.uint8),
        "tall": np.full((65536, 1), 100, np.uint8),
        "tiny": np.full((2, 2), 100, np.uint8),
    }
    sent = set()
    for round_ in range(3):
        for name, pixels in frames.items():
            frame_id = f"{name}-{round_}"
            station.frames.send_multipart(station.frame(frame_id, pixels))
            sent.add(frame_id)
    found = verdicts_by_frame(subscriber, sent, timeout_s=180)
    subscriber.close()
    peak = peak_rss_mb(worker)
    print(f"worker peak RSS after the largest frames: {peak:.0f} MB")
    assert set(found) == sent and all(len(v) == 1 for v in found.values())
    outcome = {f: v[0].verdict for f, v in found.items()}
    for name in ("mono8k", "rgb", "big16", "long"):
        assert outcome[f"{name}-0"] in (Verdict.OK, Verdict.NOK), found[f"{name}-0"][0].error
    for name in ("wide", "tall", "tiny"):
        assert outcome[f"{name}-0"] == Verdict.ERROR
    assert peak < 1500, f"worker peak RSS {peak:.0f} MB"
    assert station.children() == station.pids


def test_a_message_over_the_size_cap_disconnects_its_sender_only(station):
    """A part larger than the cap (ZMQ_MAXMSGSIZE) drops that peer's connection before the
    worker allocates it; a well-behaved capture on another connection carries on."""
    subscriber = verdict_subscriber(station)
    rogue = station.context.socket(zmq.PUSH)
    rogue.connect(station.endpoint("frames"))
    rogue.send_multipart([b"frame", b"{}", bytes(65 * 1024 * 1024)])
    rogue.send_multipart([b"frame", b"x" * (1024 * 1024)])
    for i in range(3):
        station.frames.send_multipart(station.frame(f"after-cap-{i}", good_pixels()))
    found = verdicts_by_frame(subscriber, {f"after-cap-{i}" for i in range(3)}, timeout_s=30)
    rogue.close(linger=0)
    subscriber.close()
    assert {f: len(v) for f, v in found.items()} == {f"after-cap-{i}": 1 for i in range(3)}
    assert station.children() == station.pids


def test_publisher_killed_three_times_no_part_goes_without_a_verdict(tmp_path, bank_store):
    """200 triggered parts at 5 per second under edge-run; the publisher is SIGKILLed three
    times. Every part gets exactly one verdict at a listening client, and a listening edge-tail
    reports each restart."""
    config = station_config(tmp_path, bank_store.root, publisher={"startup_hold_s": 1.0}, restart_burst=5)
    station = start_station(config)
    context = zmq.Context()
    pub, query = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/latest"
    tailed_file, tail_log = (tmp_path / "tail.jsonl").open("w"), (tmp_path / "tail.log").open("w")
    tail = subprocess.Popen(
        [sys.executable, "-m", "edge.tail", pub, "--station", STATION, "--json", "--timeout", "30",
         "--query", query],
        stdout=tailed_file,
        stderr=tail_log,
        text=True,
    )  # fmt: skip
    line = Line(context, tmp_path)
    line.subscriber.close()
    line.subscriber = Subscriber(
        pub, STATION, topics=("verdict", "heartbeat"), context=context, query_endpoint=query
    )
    parts = [f"K{i:03d}" for i in range(200)]
    kills = []
    try:
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        for number, part in enumerate(parts):
            line.trigger_parts([part], period_s=0.2)
            if number in (50, 100, 150):
                publisher = child_pid(station.pid, "edge.services.publisher")
                os.kill(publisher, signal.SIGKILL)
                kills.append(publisher)
        line.collect_until_answered(parts, timeout_s=30)
        line.collect(2.0)
    finally:
        code, output = stop_station(station)
        tail.send_signal(signal.SIGINT)
        tail.wait(timeout=30)
        tailed_file.close()
        tail_log.close()
        context.destroy(linger=0)
    tail_out, tail_err = (tmp_path / "tail.jsonl").read_text(), (tmp_path / "tail.log").read_text()
    assert code == 0, output
    assert output.count("publisher failed (signal SIGKILL); restarting it") == 3, output
    missing = [p for p in parts if not line.verdicts.get(p)]
    twice = {p: len(v) for p, v in line.verdicts.items() if len(v) > 1}
    outcome = Counter(v[0].verdict.value for v in line.verdicts.values())
    replay = line.subscriber
    print(
        f"publisher kills: 3; parts {len(parts)}; verdicts {dict(outcome)}; "
        f"recovered by replay {replay.recovered}; duplicates dropped {replay.duplicates}"
    )
    assert missing == [] and twice == {}
    assert line.subscriber.restarts == 3
    assert tail_err.count("publisher restarted") == 3, tail_err
    tailed = {json.loads(row)["part_id"] for row in tail_out.splitlines()}
    assert set(parts) <= tailed


def test_a_stray_message_of_any_envelope_stalls_no_process(station):
    """What a DEALER or a raw peer sends to a REP socket — no empty delimiter, only a delimiter,
    a delimiter and two parts — reported readable and then dropped by ZeroMQ, left a process
    waiting in its receive until the next valid request. Sent alone to the publisher's query and
    the worker's control socket while parts flow at 10/s: heartbeats keep their rate and every
    part gets its OK/NOK verdict in normal time."""
    shapes = [
        [b'{"schema":3,"camera":"cam0"}'],
        [b"no delimiter", b'{"schema":3,"camera":"cam0"}'],
        [b""],
        [b"", b"first", b"second"],
    ]
    subscriber = verdict_subscriber(station)
    worst_beat_gap, worst_latency, answered, sent = 0.0, 0.0, {}, {}
    last_beat: float | None = None
    for name in ("latest", "control"):
        for number, shape in enumerate(shapes):
            stray = station.context.socket(zmq.DEALER)
            stray.setsockopt(zmq.LINGER, 0)
            stray.connect(station.endpoint(name))
            stray.send_multipart(shape)
            for index in range(10):
                part = f"stray-{name}-{number}-{index}"
                sent[part] = time.monotonic()
                station.line.trigger.send_multipart(encode_trigger(part))
                until = time.monotonic() + 0.1
                while (left := until - time.monotonic()) > 0:
                    event = subscriber.receive(left)
                    now = time.monotonic()
                    if event is None:
                        continue
                    if event.heartbeat is not None:
                        worst_beat_gap = max(worst_beat_gap, now - last_beat) if last_beat else worst_beat_gap
                        last_beat = now
                    elif event.verdict is not None and event.verdict.part_id in sent:
                        answered[event.verdict.part_id] = event.verdict.verdict
                        worst_latency = max(worst_latency, now - sent[event.verdict.part_id])
            stray.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(answered) != set(sent):
        event = subscriber.receive(0.2)
        if event is not None and event.verdict is not None and event.verdict.part_id in sent:
            answered[event.verdict.part_id] = event.verdict.verdict
            worst_latency = max(worst_latency, time.monotonic() - sent[event.verdict.part_id])
    subscriber.close()
    assert set(answered) == set(sent)
    assert set(answered.values()) <= {Verdict.OK, Verdict.NOK}, answered
    assert worst_beat_gap < 1.0, f"heartbeats (every 0.2 s) stalled for {worst_beat_gap:.2f} s"
    assert worst_latency < 2.0, f"a part waited {worst_latency:.2f} s for its verdict"
    status = request(station.endpoint("control"), encode_control("status"), 5, station.context)
    assert status["ok"] and station.children() == station.pids
