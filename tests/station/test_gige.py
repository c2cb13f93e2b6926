"""GigE Vision against a real protocol implementation: Aravis's camera simulator
(arv-fake-gv-camera-0.8, GVCP/GVSP over UDP on 127.0.0.1), read by edge's Aravis source alone and
through a running station (edge-run), free run and software-triggered, with the camera killed and
restarted mid-stream."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import yaml
import zmq
from station_kit import Line, start_station, station_config, stop_station, wait_for_worker

from edge.pipeline.gige import AravisSource, GigESettings
from edge.protocol import Verdict

CAMERA = "127.0.0.1"  # by address: discovery by broadcast would stream to the host's other interface


def _simulator() -> str:
    tool = shutil.which("arv-fake-gv-camera-0.8")
    if tool is None or importlib.util.find_spec("gi") is None:
        why = "Aravis's simulator (aravis-tools) or PyGObject (edge[gige]) is missing"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run installs them")
        pytest.skip(f"{why} (.ci/run installs them)")
    return tool


class Simulator:
    """The fake camera as a process that a test can kill and start again."""

    def __init__(self) -> None:
        self.tool = _simulator()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.tool, "-i", CAMERA], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.5)  # its GVCP socket is bound at once; a first open retries anyway

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    camera = Simulator()
    camera.start()
    yield camera
    camera.kill()


def _frames(source: AravisSource, count: int, timeout_s: float = 10) -> list[np.ndarray]:
    frames, deadline, after = [], time.monotonic() + timeout_s, 0
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.next_frame(after, 0.5)
        if frame is not None:
            frames.append(frame.pixels)
            after = frame.taken_ns + 1
    return frames


@pytest.mark.parametrize(
    ("pixel_format", "shape", "dtype"),
    [
        ("Mono8", (512, 512), np.uint8),
        ("Mono16", (512, 512), np.uint16),
        ("RGB8", (512, 512, 3), np.uint8),
        ("BayerRG8", (512, 512, 3), np.uint8),
    ],
)
def test_free_run_frames_arrive_decoded(simulator, pixel_format, shape, dtype):
    source = AravisSource(GigESettings(CAMERA, pixel_format=pixel_format))
    try:
        frames = _frames(source, 10)
    finally:
        source.close()
    assert len(frames) == 10 and all(f.shape == shape and f.dtype == dtype for f in frames)
    assert len({f.tobytes() for f in frames}) > 1  # the simulator's image moves: these are new frames
    assert source.incomplete == {} and source.complete >= 10  # the thread may have taken one more


def test_settings_reach_the_camera(simulator):
    settings = GigESettings(CAMERA, pixel_format="Mono8", region=(16, 8, 256, 128), exposure_us=5000,
                            gain_db=2.0, packet_size=1000)  # fmt: skip
    source = AravisSource(settings)
    try:
        frames = _frames(source, 3)
        camera = source.camera
        assert (camera.get_exposure_time(), camera.get_gain(), camera.gv_get_packet_size()) == (5000, 2, 1000)
    finally:
        source.close()
    assert [f.shape for f in frames] == [(128, 256)] * 3


def _gige_station(tmp_path, bank, trigger: str) -> tuple:
    config = station_config(tmp_path, bank)
    raw = yaml.safe_load(config.read_text())
    camera = raw["cameras"][0]
    camera["source"] = {"kind": "aravis", "camera_id": CAMERA, "pixel_format": "Mono8"}
    camera["stale_after_s"] = 2.0
    if trigger == "free_run":
        camera.update(trigger="free_run", trigger_endpoint=None, deadline_ms=None)
    config.write_text(yaml.safe_dump(raw))
    return config


def test_triggered_parts_through_a_station_and_a_camera_restart(tmp_path, bank_store, simulator):
    config = _gige_station(tmp_path, bank_store.root, "triggered")
    station = start_station(config)
    context = zmq.Context()
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        before = [f"A{i:02d}" for i in range(8)]
        line.trigger_parts(before, period_s=0.2)
        line.collect_until_answered(before, timeout_s=30)
        simulator.kill()  # the camera is gone: parts now get no frame
        during = [f"B{i:02d}" for i in range(3)]
        line.trigger_parts(during, period_s=0.1)
        line.collect_until_answered(during, timeout_s=30)
        simulator.start()
        after, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:  # capture reopens the camera every 2 s
            part = f"C{len(after):02d}"
            after.append(part)
            line.trigger_parts([part], period_s=0.0)
            line.collect_until_answered([part], timeout_s=10)
            if line.verdicts[part][0].verdict in (Verdict.OK, Verdict.NOK):
                break
        more = [f"D{i:02d}" for i in range(5)]
        line.trigger_parts(more, period_s=0.2)
        line.collect_until_answered(more, timeout_s=30)
        line.collect(0.5)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    outcome = {part: [v.verdict for v in verdicts] for part, verdicts in line.verdicts.items()}
    assert all(len(v) == 1 for v in outcome.values()), outcome  # exactly one verdict per part
    unscored = {p: (line.verdicts[p][0].verdict, line.verdicts[p][0].error) for p in before + more
                if outcome[p][0] not in (Verdict.OK, Verdict.NOK)}  # fmt: skip
    assert not unscored, unscored
    assert all(outcome[p][0] == Verdict.ERROR for p in during), outcome
    assert all(outcome[p][0] == Verdict.ERROR for p in after[:-1]), outcome  # until the camera is back
    assert "control connection lost" in output or "did not open" in output
    assert all("camera gave no frame" in line.verdicts[p][0].error for p in during), outcome


def test_free_run_through_a_station(tmp_path, bank_store, simulator):
    config = _gige_station(tmp_path, bank_store.root, "free_run")
    station = start_station(config)
    context = zmq.Context()
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        line.collect(3.0)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    verdicts = line.arrivals
    assert len(verdicts) >= 10, output  # a CPU worker on 2 cores keeps up with part of 25 frames/s
    assert all(v.verdict in (Verdict.OK, Verdict.NOK) for v in verdicts)
    assert "GigE camera 127.0.0.1:" in output and "incomplete buffers {}" in output
