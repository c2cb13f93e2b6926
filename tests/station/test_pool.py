"""A worker pool behind one station: edge-run with a broker and several workers, real processes and
sockets; workers killed, joining late, or holding another bank."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq
from station_kit import Line, start_station, station_config, stop_station, wait_for_pool

from edge.client import control_request
from edge.pipeline.broker import Broker, BrokerSettings
from edge.protocol import FrameHeader, Verdict, WorkerReady, encode_frame, encode_ready


def _run_in_thread(broker: Broker) -> Callable[[], None]:
    """The broker's loop on a thread; the returned function stops it and waits for its drain."""
    stop = threading.Event()
    thread = threading.Thread(target=broker.run, args=(stop,), daemon=True)
    thread.start()
    return lambda: (stop.set(), thread.join(10))


def _slot_pids(station_pid: int) -> dict[str, int]:
    """Worker slot → pid, among edge-run's children."""
    children = Path(f"/proc/{station_pid}/task/{station_pid}/children").read_text().split()
    pids = {}
    for pid in children:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if "edge.services.worker" in command:
            pids[command[command.index("--slot") + 1]] = int(pid)
    return pids


def test_three_workers_one_killed_every_part_one_verdict_in_order(tmp_path, bank_store):
    config = station_config(tmp_path, bank_store.root, pool=3)
    station = start_station(config)
    context = zmq.Context()
    control = f"ipc://{tmp_path}/control"
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        status = wait_for_pool(control, 3)
        assert status["bank_version"] == "v0001"
        parts = [f"P{i:03d}" for i in range(60)]
        line.trigger_parts(parts[:20], period_s=0.02)
        victim = _slot_pids(station.pid)["1"]
        os.kill(victim, signal.SIGKILL)  # mid-stream: frames are on it and on their way to it
        line.trigger_parts(parts[20:], period_s=0.02)
        line.collect_until_answered(parts, timeout_s=60)
        line.collect(1.5)  # a second verdict for a part would come now
        status = control_request(control, "status", 2.0)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert sorted(line.verdicts) == parts, output
    assert {p: len(v) for p, v in line.verdicts.items() if len(v) != 1} == {}
    outcome = [line.verdicts[p][0].verdict for p in parts]
    assert outcome.count(Verdict.TIMEOUT) + outcome.count(Verdict.ERROR) <= 2, outcome
    arrival = [v.capture_monotonic_ns for v in line.arrivals]
    assert arrival == sorted(arrival), "verdicts left the publisher out of capture order"
    assert "worker:1 failed (signal SIGKILL); restarting it" in output
    assert "is dead (" in output and "to send again" in output  # the broker resent what it held
    assert "reordered_gaps=0" in output
    assert sum(w["sent"] > 0 for w in status["workers"]) >= 2, status  # the load was shared


def test_a_late_worker_gets_work_and_one_with_another_bank_is_refused(tmp_path, bank_store):
    config = station_config(tmp_path, bank_store.root, pool=1)
    station = start_station(config)
    context = zmq.Context()
    control = f"ipc://{tmp_path}/control"
    other_bank = tmp_path / "other-line"
    shutil.copytree(bank_store.root, other_bank)  # the same model, but another line's bank
    late_config = station_config(tmp_path, bank_store.root, pool=2, name="late.yaml")
    stranger_config = station_config(tmp_path, other_bank, pool=3, name="stranger.yaml")
    extra = []
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        wait_for_pool(control, 1)
        for path, slot in ((late_config, "1"), (stranger_config, "2")):
            extra.append(subprocess.Popen(
                [sys.executable, "-m", "edge.services.worker", str(path), "--slot", slot],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))  # fmt: skip
        status = wait_for_pool(control, 2)
        deadline = time.monotonic() + 60
        while len(status["workers"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = control_request(control, "status", 2.0)
        parts = [f"L{i:03d}" for i in range(30)]
        line.trigger_parts(parts, period_s=0.01)
        line.collect_until_answered(parts, timeout_s=60)
        status = control_request(control, "status", 2.0)
    finally:
        for process in extra:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=30)[0] for process in extra]
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert all(len(line.verdicts[p]) == 1 for p in parts)
    by_name = {w["worker"].rsplit("-", 1)[1]: w for w in status["workers"]}
    assert by_name["1"]["sent"] > 0, status  # the late worker took part of the load
    assert by_name["2"]["sent"] == 0 and "other-line" in by_name["2"]["refused"], status
    assert "gets no frames: it scores with bank other-line" in output
    assert "the broker gives this worker no frames" in outputs[1]


def test_the_broker_survives_hostile_workers_and_keeps_serving(tmp_path):
    """Garbage, lies and oversized messages on the workers endpoint are counted and dropped; an honest
    worker still gets every frame."""
    frames, workers = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/workers"
    context = zmq.Context()
    broker = Broker(BrokerSettings("st1", frames, workers, worker_timeout_s=1.0), context)
    stop = _run_in_thread(broker)
    hostile = context.socket(zmq.DEALER)
    hostile.connect(workers)
    for parts in (
        [b"ready"],
        [b"ready", b"{not json"],
        [b"ready", b'{"schema": 4}'],
        [b"ready", b'{"schema": 3, "worker": "x", "received": -1, "answered": 0, "capacity": 5,'
                   b' "received_bytes": 0, "capacity_bytes": 9, "bank_id": "b", "bank_version": "v1"}'],
        [b"ready", b'{"schema": 3, "worker": "x", "received": 1, "answered": 9, "capacity": 5,'
                   b' "received_bytes": 0, "capacity_bytes": 9, "bank_id": "b", "bank_version": "v1"}'],
        [b"hello", b"world"],
        [b"ready", b"x" * (1 << 20)],  # over the endpoint's size cap: the peer is disconnected
    ):  # fmt: skip
        hostile.send_multipart(parts)
    honest = context.socket(zmq.DEALER)
    honest.connect(workers)
    pusher = context.socket(zmq.PUSH)
    pusher.connect(frames)
    pixels = np.zeros((8, 8), np.uint8)
    received = answered = received_bytes = 0

    def report() -> None:
        ready = WorkerReady("honest", received, answered, 4, received_bytes, 1 << 20, "bank", "v0001")
        honest.send_multipart(encode_ready(ready))

    report()
    for seq in range(50):
        header = FrameHeader("st1", "cam0", seq, f"f{seq}", "2026-01-01T00:00:00+00:00", 1, 8, 8, 1)
        pusher.send_multipart(encode_frame(header, pixels))
    deadline = time.monotonic() + 20
    while received < 50 and time.monotonic() < deadline:
        if honest.poll(100):
            parts = honest.recv_multipart()
            assert parts[0] == b"frame"
            received += 1
            received_bytes += sum(len(part) for part in parts)
            answered += 1
        report()
    stop()
    context.destroy(linger=0)
    assert received == 50 and broker.counters.frames_out == 50
    assert {"parts", "json", "schema", "field", "topic"} <= set(broker.counters.malformed), broker.counters


def test_the_pool_reloads_as_one_through_the_broker(tmp_path, bank_store):
    """edge-calibrate's reload request reaches the broker in a pool: every worker loads the new version,
    the reply comes once all have, and from then on every verdict names it."""
    from edge.bankstore import BankStore
    from edge.engine.artifact import load_model

    store_root = tmp_path / "banks" / bank_store.root.name
    shutil.copytree(bank_store.root, store_root)
    config = station_config(tmp_path, store_root, pool=2)
    station = start_station(config)
    context = zmq.Context()
    control = f"ipc://{tmp_path}/control"
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        assert wait_for_pool(control, 2)["bank_version"] == "v0001"
        store = BankStore(store_root)
        assert store.publish(load_model(store.path_of("v0001"))) == "v0002"
        reply = control_request(control, "reload", 120.0)
        status = control_request(control, "status", 2.0)
        parts = [f"R{i:02d}" for i in range(10)]
        line.trigger_parts(parts, period_s=0.05)
        line.collect_until_answered(parts, timeout_s=30)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert reply["ok"] and reply["bank_version"] == "v0002", reply
    assert [(w["bank_version"], w["refused"]) for w in status["workers"]] == [("v0002", None)] * 2, status
    assert {line.verdicts[p][0].bank_version for p in parts} == {"v0002"}


def test_the_broker_sends_a_worker_no_more_bytes_than_it_has_room_for(tmp_path):
    """Credit is in frames and in bytes: a worker's inbox stays bounded in memory whatever sizes the
    captures send, and a frame waits in the broker until a worker has room for it."""
    frames, workers = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/workers"
    context = zmq.Context()
    stop = _run_in_thread(Broker(BrokerSettings("st1", frames, workers), context))
    pusher = context.socket(zmq.PUSH)
    pusher.connect(frames)
    messages = [
        encode_frame(FrameHeader("st1", "cam0", i, f"f{i}", "2026-01-01T00:00:00+00:00", 1, 64, 64, 1),
                     np.zeros((64, 64), np.uint8))
        for i in range(5)
    ]  # fmt: skip
    size = sum(len(bytes(part)) for part in messages[0])
    for message in messages:
        pusher.send_multipart(message)
    peer = context.socket(zmq.DEALER)
    peer.connect(workers)

    def take(seconds: float) -> int:
        taken, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if peer.poll(50):
                peer.recv_multipart()
                taken += 1
        return taken

    room = size * 5 // 2  # two and a half frames
    peer.send_multipart(encode_ready(WorkerReady("peer", 0, 0, 10, 0, room, "bank", "v0001")))
    first = take(1.0)
    peer.send_multipart(encode_ready(WorkerReady("peer", 2, 2, 10, 2 * size, room, "bank", "v0001")))
    second = take(1.0)
    stop()
    context.destroy(linger=0)
    assert (first, second) == (2, 2)
