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
import yaml
import zmq
from station_kit import Line, start_station, station_config, stop_station, wait_for_worker, wait_until

from edge.pipeline.sources import OpenCVSource
from edge.protocol import Verdict

SERVER = Path(__file__).parent / "tools" / "rtsp_server.py"
TRIGGER_TIMEOUT_S = 1.0


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


def _serve(port: int, *shape: int) -> subprocess.Popen:
    command = [sys.executable, str(SERVER), str(port), *map(str, shape)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert "serving" in server.stdout.readline()
    return server


def _read(source: OpenCVSource, count: int, timeout_s: float) -> list:
    frames, deadline, after = [], time.monotonic() + timeout_s, time.monotonic_ns()  # frames from now on
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.next_frame(after, 0.5)
        if frame is not None:
            frames.append(frame.pixels)
            after = frame.taken_ns + 1
    return frames


def test_rtsp_frames_and_reconnect_after_the_server_restarts_at_another_size(caplog):
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
        server = _serve(port, 640, 480, 10)  # the camera comes back at another resolution
        again = _read(source, 10, timeout_s=60)
    finally:
        source.close()
        server.kill()
    health = source.health.snapshot()
    assert len(again) == 10 and health.reconnects == 1 and all(f.shape == (480, 640, 3) for f in again)
    assert (health.width, health.height) == (640, 480)
    assert "frame size changed from 320x240 to 640x480" in caplog.text  # taken, and said


def test_rtsp_station_with_a_stream_that_dies_a_url_that_never_existed_and_a_missing_device(
    tmp_path, bank_store
):
    """Three triggered cameras: a live RTSP stream whose server is killed for good, a URL its server
    answers 404, and /dev/video7 that is not there. --check-config and edge-run warn of the same two
    and start; every part of every camera gets exactly one verdict, also those triggered when the
    station is stopped during the outage; the heartbeats say which camera is away and why."""
    _server_available()
    port = _free_port()
    server = _serve(port)
    config = station_config(tmp_path, bank_store.root)
    raw = yaml.safe_load(config.read_text())
    base = raw["cameras"][0]
    raw["cameras"] = [
        {**base, "name": name, "source": {"kind": "opencv", "uri": uri}, "trigger_endpoint": f"ipc://{tmp_path}/{trig}",
         "trigger_timeout_ms": TRIGGER_TIMEOUT_S * 1000, "stale_after_s": 2.0}
        for name, uri, trig in (
            ("cam0", f"rtsp://127.0.0.1:{port}/test", "trig"),
            ("cam1", f"rtsp://127.0.0.1:{port}/nothing", "trig1"),
            ("cam2", "/dev/video7", "trig2"),
        )
    ]  # fmt: skip
    config.write_text(yaml.safe_dump(raw))
    check = subprocess.run([sys.executable, "-m", "edge.services.supervisor", str(config), "--check-config"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "cam1): the RTSP server answered 404 Not Found" in check.stderr, check.stderr
    assert "cam2): /dev/video7 does not exist" in check.stderr, check.stderr
    station = start_station(config)
    context = zmq.Context()
    try:
        line = Line(context, tmp_path)
        others = {"cam1": line.trigger_socket("trig1"), "cam2": line.trigger_socket("trig2")}
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        line.wait_for_camera("cam0", ("streaming",), 30)
        parts: dict[str, list[str]] = {"cam0": [], "cam1": [], "cam2": []}

        def round_of_parts(label: str, count: int) -> None:
            for index in range(count):
                for camera, socket in (("cam0", None), *others.items()):
                    parts[camera].append(f"{label}{index:02d}-{camera}")
                    line.trigger_parts(parts[camera][-1:], period_s=0.1, socket=socket)

        round_of_parts("A", 6)
        states = dict(line.cameras)
        server.kill()  # the stream dies for good
        round_of_parts("B", 8)
        line.trigger_parts(["C00-cam0"], period_s=0.0)
        parts["cam0"].append("C00-cam0")
    finally:
        stopping = time.monotonic()
        code, output = stop_station(station)
        stopped_s = time.monotonic() - stopping
        server.kill()
    line.collect(1.0)
    context.destroy(linger=0)
    assert code == 0, output
    tally = line.tally(TRIGGER_TIMEOUT_S)
    print(f"RTSP station, 3 cameras: {tally}; stopped {stopped_s:.1f} s after SIGTERM")
    assert tally == {"sent": tally["sent"], "answered": tally["sent"], "doubled": 0, "lost": 0, "late": 0}
    verdict = {part: verdicts[0] for part, verdicts in line.verdicts.items()}
    assert all(verdict[p].verdict in (Verdict.OK, Verdict.NOK) for p in parts["cam0"][:6]), output
    assert all(
        verdict[p].verdict == Verdict.ERROR and "404 Not Found" in verdict[p].error for p in parts["cam1"]
    )
    assert all(
        verdict[p].verdict == Verdict.ERROR and "/dev/video7" in verdict[p].error for p in parts["cam2"]
    )
    assert states["cam0"]["state"] == "streaming" and states["cam0"]["width"] == 320
    assert states["cam1"]["state"] in ("starting", "gone") and "404" in states["cam1"]["reason"]
    assert states["cam2"]["state"] in ("starting", "gone") and "does not exist" in states["cam2"]["reason"]
    assert "cam2): /dev/video7 does not exist" in output  # edge-run warns as --check-config did
