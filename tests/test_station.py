"""edge-run as a station runs it: separate processes, restarts, SIGTERM drain (subprocesses, real sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
import zmq

from edge.client import Subscriber, control_request
from edge.protocol import Verdict, encode_trigger
from edge.services.supervisor import EXIT_RESTART_LIMIT, main

STATION = "st1"


def station_config(folder: Path, bank: Path, **supervisor: float) -> Path:
    ipc = {
        name: f"ipc://{folder}/{name}" for name in ("frames", "results", "pub", "latest", "control", "trig")
    }
    config = {
        "station": STATION,
        "bank": {"path": str(bank)},
        "endpoints": {k: ipc[k] for k in ("frames", "results", "latest", "control")}
        | {"publish": ipc["pub"]},
        "cameras": [
            {
                "name": "cam0",
                "source": {"kind": "synthetic", "size": 160, "defect_rate": 0.3, "seed": 5},
                "trigger": "triggered",
                "trigger_endpoint": ipc["trig"],
                "deadline_ms": 3000,
            }
        ],
        "worker": {"max_batch": 4, "max_wait_ms": 5},
        "publisher": {"heartbeat_s": 0.2, "default_deadline_ms": 3000},
        "supervisor": {"restart_burst": 3, "restart_interval_s": 60, "drain_timeout_s": 20, **supervisor},
    }
    path = folder / "station.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_station(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.services.supervisor", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def child_pid(parent: int, module: str) -> int | None:
    """The pid of `parent`'s child running `python -m module` (Linux /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        try:
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " "):
                return int(pid)
        except FileNotFoundError:
            continue
    return None


def wait_for_worker(endpoint: str, timeout_s: float = 60) -> dict:
    """Ask the worker's control endpoint for its status until it answers (it binds once its bank loaded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = control_request(endpoint, "status", 1.0)
        if reply is not None:
            return reply
    raise AssertionError(f"the worker did not answer on {endpoint} within {timeout_s} s")


class Line:
    """Sends triggers to the station and collects what its publisher says about each part."""

    def __init__(self, context: zmq.Context, folder: Path) -> None:
        self.trigger = context.socket(zmq.PUSH)
        self.trigger.setsockopt(zmq.LINGER, 1000)
        self.trigger.connect(f"ipc://{folder}/trig")
        self.subscriber = Subscriber(
            f"ipc://{folder}/pub", STATION, topics=("verdict", "heartbeat"), context=context
        )
        self.verdicts: dict[str, list] = defaultdict(list)

    def wait_for_publisher(self) -> None:
        assert self.subscriber.receive(30) is not None, "the publisher did not start"

    def trigger_parts(self, names: list[str], period_s: float = 0.05) -> None:
        for name in names:
            self.trigger.send_multipart(encode_trigger(name))
            self.collect(period_s)

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            event = self.subscriber.receive(remaining)
            if event is not None and event.verdict is not None:
                self.verdicts[event.verdict.part_id].append(event.verdict)

    def collect_until_answered(self, parts: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self.verdicts.get(p) for p in parts):
            self.collect(0.2)


def stop_station(station: subprocess.Popen) -> tuple[int, str]:
    station.send_signal(signal.SIGTERM)
    output, _ = station.communicate(timeout=60)
    return station.returncode, output


def test_worker_killed_mid_stream_every_part_gets_exactly_one_verdict(tmp_path, bank_store):
    config = station_config(tmp_path, bank_store.root)
    station = start_station(config)
    context = zmq.Context()
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        first = wait_for_worker(f"ipc://{tmp_path}/control")
        assert first["bank_version"] == "v0001"
        before = [f"A{i:03d}" for i in range(20)]
        line.trigger_parts(before[:10])
        worker = child_pid(station.pid, "edge.services.worker")
        os.kill(worker, signal.SIGKILL)  # mid-stream: parts are in the worker's hands and on the way
        line.trigger_parts(before[10:])
        wait_for_worker(f"ipc://{tmp_path}/control")  # restarted by edge-run
        assert child_pid(station.pid, "edge.services.worker") != worker
        after = [f"B{i:03d}" for i in range(10)]
        line.trigger_parts(after)
        line.collect_until_answered(before + after, timeout_s=30)
        line.collect(1.0)  # a late second verdict would come now
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert "worker failed (signal SIGKILL); restarting it" in output
    assert sorted(line.verdicts) == sorted(before + after), output
    assert {p: len(v) for p, v in line.verdicts.items() if len(v) != 1} == {}
    outcome = {p: v[0].verdict for p, v in line.verdicts.items()}
    assert all(outcome[p] in (Verdict.OK, Verdict.NOK) for p in after)  # the restarted worker scores
    assert sum(outcome[p] in (Verdict.OK, Verdict.NOK) for p in before[:10]) >= 1
    lost = [p for p in before if outcome[p] in (Verdict.TIMEOUT, Verdict.ERROR)]
    print(
        f"parts sent {len(before) + len(after)}; in flight at the kill, answered TIMEOUT/ERROR: {len(lost)}"
    )


def test_sigterm_drains_triggered_parts_before_stopping(tmp_path, bank_store):
    config = station_config(tmp_path, bank_store.root)
    station = start_station(config)
    context = zmq.Context()
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        parts = [f"P{i:03d}" for i in range(12)]
        line.trigger_parts(parts, period_s=0.0)
        time.sleep(0.2)  # the triggers have reached capture; most parts are not scored yet
    finally:
        code, output = stop_station(station)
    line.collect(0.5)
    context.destroy(linger=0)
    assert code == 0, output
    assert sorted(line.verdicts) == parts, output
    assert all(len(v) == 1 and v[0].verdict in (Verdict.OK, Verdict.NOK) for v in line.verdicts.values())


def test_a_process_failing_too_often_stops_the_station(tmp_path, bank_store):
    broken = tmp_path / "broken"
    (broken / "versions").mkdir(parents=True)
    (broken / "ACTIVE").write_text("v0009\n")  # names a version that is not there: the worker exits 4
    config = station_config(tmp_path, broken, restart_burst=1)
    station = start_station(config)
    output, _ = station.communicate(timeout=120)
    assert station.returncode == EXIT_RESTART_LIMIT, output
    assert "worker failed (exit code 4); restarting it" in output
    assert "worker failed (exit code 4) after 1 restarts" in output
    assert "Traceback" not in output


def test_check_config_validates_without_starting(tmp_path, bank_store, caplog):
    config = station_config(tmp_path, bank_store.root)
    assert main([str(config), "--check-config"]) == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(config.read_text().replace("max_batch: 4", "max_batch: four"))
    assert main([str(broken), "--check-config"]) == 6
    assert "worker.max_batch: Input should be a valid integer (got 'four')" in caplog.text


@pytest.mark.parametrize("command", ["edge-run", "edge-capture", "edge-worker", "edge-publisher"])
def test_every_station_command_has_help(command):
    module = {"edge-run": "supervisor"}.get(command, command.removeprefix("edge-"))
    result = subprocess.run(
        [sys.executable, "-m", f"edge.services.{module}", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "exit codes" in result.stdout


def test_calibrate_from_the_live_capture_then_reload_on_sighup(tmp_path):
    """Cold start: capture runs, no bank yet; edge-calibrate --config collects frames through it and
    writes v0001; the station starts on it; a rollback written later is taken on SIGHUP."""
    from edge.bankstore import BankStore
    from edge.calibration.cli import main as calibrate_main

    store = BankStore(tmp_path / "banks")
    store.root.mkdir()
    config = station_config(tmp_path, store.root)
    raw = yaml.safe_load(config.read_text())
    raw["cameras"][0] = {
        "name": "cam0",
        "source": {"kind": "synthetic", "size": 160, "rate_hz": 20, "seed": 9},
    }
    raw["calibration"] = {"frames": 12, "coreset_fraction": 0.1, "folds": 3}
    config.write_text(yaml.safe_dump(raw))
    capture = subprocess.Popen(
        [sys.executable, "-m", "edge.services.capture", str(config), "--camera", "cam0"]
    )
    try:
        assert calibrate_main(["--config", str(config), "--quiet"]) == 0
    finally:
        capture.send_signal(signal.SIGTERM)
        assert capture.wait(30) == 0
    assert store.versions() == ["v0001"]
    assert calibrate_main(["--config", str(config), "--wait", "1", "--quiet"]) == 2  # no capture: clear error
    store.publish(load_model_copy(store))  # v0002, active
    station = start_station(config)
    context = zmq.Context()
    try:
        control = f"ipc://{tmp_path}/control"
        assert wait_for_worker(control)["bank_version"] == "v0002"
        assert calibrate_main(["--rollback", "v0001", "--out", str(store.root)]) == 0  # no one told
        assert wait_for_worker(control)["bank_version"] == "v0002"
        os.kill(child_pid(station.pid, "edge.services.worker"), signal.SIGHUP)
        deadline = time.monotonic() + 30
        while wait_for_worker(control)["bank_version"] != "v0001":
            assert time.monotonic() < deadline, "the worker did not reload on SIGHUP"
            time.sleep(0.2)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert "replaced by banks v0001" in output


def load_model_copy(store):
    from edge.engine.artifact import load_model

    return load_model(store.active().path)


def test_station_stops_by_itself_when_every_source_has_ended(tmp_path, bank_store):
    config = station_config(tmp_path, bank_store.root)
    raw = yaml.safe_load(config.read_text())
    raw["cameras"][0] = {"name": "cam0", "source": {"kind": "synthetic", "size": 160, "count": 6, "seed": 2}}
    config.write_text(yaml.safe_dump(raw))
    context = zmq.Context()
    subscriber = Subscriber(f"ipc://{tmp_path}/pub", STATION, topics=("verdict",), context=context)
    station = start_station(config)
    output, _ = station.communicate(timeout=120)
    received = []
    while (event := subscriber.receive(0.5)) is not None:
        received.append(event.verdict.frame_id)
    context.destroy(linger=0)
    assert station.returncode == 0, output
    assert "every camera's source has ended" in output
    assert 1 <= len(received) <= 6 and len(set(received)) == len(received)  # free run: newest kept
