"""edge-run as a station runs it: separate processes, restarts, SIGTERM drain (subprocesses, real sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
import zmq
from station_kit import (
    STATION,
    Line,
    child_pid,
    start_station,
    station_config,
    stop_station,
    wait_for_worker,
)

from edge.client import Subscriber
from edge.protocol import Verdict
from edge.services.supervisor import EXIT_RESTART_LIMIT, main


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


@pytest.mark.parametrize(
    "command", ["edge-run", "edge-capture", "edge-worker", "edge-broker", "edge-publisher"]
)
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
