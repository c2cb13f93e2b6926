"""edge-run as a station runs it: separate processes, restarts, SIGTERM drain (subprocesses, real sockets)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def test_each_part_is_judged_by_the_recipe_its_trigger_names(tmp_path, bank_store):
    """Two recipes on one camera under edge-run, the product changing every part: each verdict
    names its part's recipe; the recipe that ignores most of the frame passes parts the whole-frame
    one rejects; a product the station does not have is an ERROR that names the recipes."""
    config = station_config(tmp_path, bank_store.root)
    raw = yaml.safe_load(config.read_text())
    bank = raw.pop("bank")
    raw["recipes"] = [
        {"name": "whole", "number": 1, "bank": bank},
        {"name": "corner", "number": 2, "bank": bank, "frame": {"width": 160, "height": 160},
         "regions": [{"name": "corner", "rect": [0, 0, 16, 16], "min_area_px": 4}]},
    ]  # fmt: skip
    config.write_text(yaml.safe_dump(raw))
    station = start_station(config)
    context = zmq.Context()
    parts = [f"R{i:03d}" for i in range(24)]
    products = ["whole", "corner"] * 12
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        line.trigger_parts([*parts, "X000"], period_s=0.1, products=[*products, "shaft"])
        line.collect_until_answered([*parts, "X000"], timeout_s=30)
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert {p: len(v) for p, v in line.verdicts.items()} == {p: 1 for p in [*parts, "X000"]}
    verdicts = {p: v[0] for p, v in line.verdicts.items()}
    assert [verdicts[p].recipe for p in parts] == products
    assert all(verdicts[p].verdict in (Verdict.OK, Verdict.NOK) for p in parts)
    whole_nok = [p for p, product in zip(parts, products, strict=True) if product == "whole"
                 and verdicts[p].verdict == Verdict.NOK]  # fmt: skip
    corner = [verdicts[p] for p, product in zip(parts, products, strict=True) if product == "corner"]
    assert whole_nok, "the synthetic line made no NOK part"
    assert sum(v.verdict == Verdict.NOK for v in corner) < len(whole_nok)
    for verdict in (verdicts[p] for p in whole_nok):
        assert verdict.reason == "defect" and verdict.region == "frame" and verdict.defects
    unknown = verdicts["X000"]
    assert (unknown.verdict, unknown.reason, unknown.recipe) == (Verdict.ERROR, "recipe", "shaft")
    assert unknown.error == "unknown recipe 'shaft': this station's recipes are whole, corner"


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
    """A worker that keeps dying (killed here) is restarted up to the limit, then the station stops."""
    config = station_config(tmp_path, bank_store.root, restart_burst=1)
    station = start_station(config)
    control = f"ipc://{tmp_path}/control"
    for _ in range(2):
        wait_for_worker(control)
        os.kill(child_pid(station.pid, "edge.services.worker"), signal.SIGKILL)
        time.sleep(0.5)
    output, _ = station.communicate(timeout=120)
    assert station.returncode == EXIT_RESTART_LIMIT, output
    assert "worker failed (signal SIGKILL); restarting it" in output
    assert "worker failed (signal SIGKILL) after 1 restarts" in output
    assert "Traceback" not in output


def run_station(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.services.supervisor", str(config), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_configuration_mistake_is_said_once_and_stops_without_restarts(tmp_path, bank_store):
    """What a restart cannot fix — a port another program holds, a bank store with no active
    bank, an ACTIVE file naming a missing version — is one line and exit 6, from --check-config
    and from edge-run alike; no traceback, no restart loop."""
    with socket.socket() as holder:  # another program on the publisher's port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = station_config(tmp_path, bank_store.root)
        raw = yaml.safe_load(config.read_text())
        raw["endpoints"]["publish"] = f"tcp://127.0.0.1:{port}"
        config.write_text(yaml.safe_dump(raw))
        for extra in (["--check-config"], []):
            result = run_station(config, *extra)
            output = result.stdout + result.stderr
            assert result.returncode == 6, output
            assert f"endpoints.publish: tcp://127.0.0.1:{port} cannot be bound" in output, output
            assert "another program holds it" in output
            assert "Traceback" not in output and "restarting" not in output
    empty = tmp_path / "empty-store"
    empty.mkdir()
    broken = tmp_path / "broken-store"
    (broken / "versions").mkdir(parents=True)
    (broken / "ACTIVE").write_text("v0009\n")
    cases = ((empty, "holds no active bank yet"), (broken, "names 'v0009', which is not a version"))
    for store, says in cases:
        config = station_config(tmp_path, store, name=f"{store.name}.yaml")
        for extra in (["--check-config"], []):
            result = run_station(config, *extra)
            output = result.stdout + result.stderr
            assert result.returncode == 6 and says in output, output
            assert "Traceback" not in output and "restarting" not in output
    assert not list(tmp_path.glob("*.sock")) and not (tmp_path / "pub").exists()  # no probe left behind


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
