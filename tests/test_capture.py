import time

import cv2
import numpy as np
import zmq

from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.sources import FolderSource, OpenCVSource, SyntheticSource, frames
from edge.protocol import decode_frame


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


def test_missing_camera_is_retried_with_backoff_not_raised():
    source = OpenCVSource("/dev/video-does-not-exist", backoff_s=(0.01, 0.02))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert source.read() is None
        time.sleep(0.005)
    assert source.reopens >= 3 and not source.exhausted
    source.close()


def test_free_run_keeps_only_the_newest_frame_and_counts_drops(tmp_path):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/frames"
    capture = Capture(SyntheticSource(64, count=0), CaptureSettings("s", "cam", endpoint), context)
    for _ in range(10):  # no worker yet: nothing can be sent
        capture.offer(np.zeros((16, 16), np.uint8))
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
