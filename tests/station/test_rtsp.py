"""An IP camera's RTSP stream read by the OpenCV source (its FFmpeg backend), served by a real RTSP
server on 127.0.0.1 (GStreamer's gst-rtsp-server, tests/station/tools/rtsp_server.py), which is killed and
started again mid-stream."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from station_kit import wait_until

from edge.pipeline.sources import OpenCVSource

SERVER = Path(__file__).parent / "tools" / "rtsp_server.py"


def _server_available() -> None:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    ok = (
        importlib.util.find_spec("gi") is not None
        and subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode == 0
    )
    if not ok:
        why = "gst-rtsp-server (gir1.2-gst-rtsp-server-1.0) or PyGObject (edge[gige]) is missing"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run installs them")
        pytest.skip(f"{why} (.ci/run installs them)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(SERVER), str(port)], stdout=subprocess.PIPE, text=True)
    assert "serving" in server.stdout.readline()
    return server


def _read(source: OpenCVSource, count: int, timeout_s: float) -> list:
    frames, deadline, after = [], time.monotonic() + timeout_s, 0
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.next_frame(after, 0.5)
        if frame is not None:
            frames.append(frame.pixels)
            after = frame.taken_ns + 1
    return frames


def test_rtsp_frames_and_reconnect_after_the_server_restarts():
    _server_available()
    port = _free_port()
    server = _serve(port)
    source = OpenCVSource(f"rtsp://127.0.0.1:{port}/test")
    try:
        first = _read(source, 10, timeout_s=20)
        assert len(first) == 10 and all(f.shape == (240, 320, 3) for f in first)
        server.kill()
        server.wait()
        wait_until(lambda: source.health.snapshot().state == "reconnecting", 20, "the dead stream noticed")
        server = _serve(port)
        again = _read(source, 10, timeout_s=60)
    finally:
        source.close()
        server.kill()
    assert len(again) == 10 and source.health.snapshot().reconnects == 1
