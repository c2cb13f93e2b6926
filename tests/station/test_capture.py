import json
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import zmq
from station_kit import wait_until

from edge.errors import UsageError
from edge.pipeline.camera_state import Frame
from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.gige import AravisSource, GigESettings
from edge.pipeline.sources import FolderSource, OpenCVSource, SyntheticSource, frames
from edge.protocol import Verdict, decode_expect, decode_frame, decode_verdict, encode_trigger


def test_folder_replay_in_order_and_loop(tmp_path):
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"{index:02d}.png"), np.full((8, 8), index * 50, np.uint8))
    once = [int(f[0, 0]) for f in frames(FolderSource(tmp_path))]
    assert once == [0, 50, 100]
    looping = FolderSource(tmp_path, rate_hz=200, loop=True)
    started = time.monotonic()
    values = [int(looping.read()[0, 0]) for _ in range(7)]
    assert values == [0, 50, 100, 0, 50, 100, 0]
    assert time.monotonic() - started >= 6 / 200 * 0.9  # paced at the rate


def test_missing_camera_is_retried_with_backoff_and_reported_with_its_reason():
    source = OpenCVSource("/dev/video-does-not-exist", backoff_s=(0.01, 0.02), camera="top")
    try:
        assert source.next_frame(0, 0.5) is None
        health = source.health.snapshot()
        assert health.attempts >= 3 and not source.exhausted and health.reconnects == 0
        assert health.state == "starting" and "/dev/video-does-not-exist does not exist" in health.reason
        assert health.reported(gone_after_s=0.1) == "gone"
    finally:
        source.close()


def test_free_run_keeps_only_the_newest_frame_and_counts_drops(tmp_path):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/frames"
    capture = Capture(SyntheticSource(64, count=0), CaptureSettings("s", "cam", endpoint), context)
    for _ in range(10):  # no worker yet: nothing can be sent
        capture.offer(Frame.now(np.zeros((16, 16), np.uint8)))
    # one frame fits the socket's one-slot queue, the newest waits, the 8 between are dropped
    assert capture.counters.dropped == 8 and capture.counters.sent == 1
    worker = context.socket(zmq.PULL)
    worker.bind(endpoint)
    deadline = time.monotonic() + 5
    while capture.pending is not None and time.monotonic() < deadline:
        capture._flush()
        time.sleep(0.01)
    received = []
    while worker.poll(500):
        received.append(decode_frame(worker.recv_multipart())[0].seq)
    assert received == [0, 9]
    capture.close()
    worker.close()
    context.destroy(linger=0)


def _drain(socket: zmq.Socket, wait_ms: int = 300) -> list[list[bytes]]:
    messages = []
    while socket.poll(wait_ms):
        messages.append(socket.recv_multipart())
    return messages


def test_run_streams_a_finite_source_and_accounts_for_every_frame(tmp_path):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/frames"
    worker = context.socket(zmq.PULL)
    worker.bind(endpoint)
    capture = Capture(SyntheticSource(64, count=25), CaptureSettings("s", "cam", endpoint), context)
    counters = capture.run(threading.Event())  # returns when the source ends
    received = [decode_frame(m)[0].seq for m in _drain(worker)]
    assert counters.sent + counters.dropped == 25
    assert len(received) == counters.sent and received == sorted(received) and received[-1] == 24
    capture.close()
    context.destroy(linger=0)


def test_run_serves_triggers_and_answers_a_part_without_a_frame(tmp_path):
    """Triggered: each valid trigger becomes one announced frame with its part id; malformed
    triggers are counted; a part the camera gives no frame for gets an ERROR verdict."""
    context = zmq.Context()
    sockets = {}
    for name in ("frames", "results"):
        sockets[name] = context.socket(zmq.PULL)
        sockets[name].bind(f"ipc://{tmp_path}/{name}")
    settings = CaptureSettings(
        "s",
        "cam",
        f"ipc://{tmp_path}/frames",
        trigger="triggered",
        deadline_ms=500,
        stale_after_s=0.2,
        results_endpoint=f"ipc://{tmp_path}/results",
        trigger_endpoint=f"ipc://{tmp_path}/trigger",
    )
    capture = Capture(SyntheticSource(64, count=2), settings, context)
    stop = threading.Event()
    running = threading.Thread(target=capture.run, args=(stop,))
    running.start()
    plc = context.socket(zmq.PUSH)
    plc.connect(settings.trigger_endpoint)
    for message in (
        encode_trigger("P1"),
        [b"trigger", b"{not json"],
        encode_trigger("P2", "screw"),  # the product travels with the part
        [b"trigger", json.dumps({"schema": 3, "part_id": ""}).encode()],
        [b"trigger"],
        encode_trigger("P3", "bottle"),  # the source has only two frames
    ):
        plc.send_multipart(message)
    counters = capture.counters  # every trigger served: 2 frames, 1 part without one, 3 refused
    wait_until(
        lambda: (counters.sent, counters.failed.total(), counters.malformed_triggers.total()) == (2, 1, 3),
        10,
        "the six trigger messages to be served",
    )
    stop.set()
    running.join(5)
    frames = [decode_frame(m)[0] for m in _drain(sockets["frames"])]
    announced = [m for m in _drain(sockets["results"]) if m[0] != b"camera"]  # not the camera's state
    assert [(f.part_id, f.seq, f.product) for f in frames] == [("P1", 0, None), ("P2", 1, "screw")]
    assert [decode_expect(m).part_id for m in announced[:2]] == ["P1", "P2"]
    error = decode_verdict(announced[2][:2])
    assert (error.part_id, error.verdict) == ("P3", Verdict.ERROR) and "no frame" in error.error
    assert (error.recipe, error.reason) == ("bottle", "camera")
    assert len(announced) == 3 and capture.counters.failed == {"no_frame": 1}
    assert capture.counters.malformed_triggers == {"json": 1, "field": 1, "parts": 1}
    for socket in (*sockets.values(), plc):
        socket.close()
    capture.close()
    context.destroy(linger=0)


def test_gige_camera_without_aravis_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gi", None)  # as on a station without PyGObject: import fails
    with pytest.raises(UsageError, match=r"gir1\.2-aravis-0\.8"):
        AravisSource(GigESettings("any"))
