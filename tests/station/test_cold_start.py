"""Cold start as docs/operations.md tells it: a station with no bank yet runs its capture process
alone, `edge-calibrate --config` collects good frames from it and builds the first bank, and then
the whole station starts. For a free-running camera, and for a triggered one fed by edge-trigger."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml
from station_kit import station_config

from edge.bankstore import BankStore


@pytest.mark.parametrize("trigger", ["free_run", "triggered"])
def test_cold_start_builds_the_first_bank_from_the_running_capture(tmp_path, trigger):
    bank = tmp_path / "bank"  # not there yet
    config = station_config(tmp_path, bank)
    raw = yaml.safe_load(config.read_text())
    camera = raw["cameras"][0]
    camera["source"] = {"kind": "synthetic", "size": 160, "defect_rate": 0.0, "rate_hz": 20}
    if trigger == "free_run":
        camera.update(trigger="free_run", trigger_endpoint=None, deadline_ms=None)
    raw["calibration"] = {"frames": 24, "folds": 3, "input_size": 128, "geometry": "squash"}
    config.write_text(yaml.safe_dump(raw))
    before = subprocess.run([sys.executable, "-m", "edge.services.supervisor", str(config), "--check-config"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert before.returncode == 6 and "run edge-calibrate" in before.stderr, before.stderr
    python = [sys.executable, "-m"]
    capture = subprocess.Popen([*python, "edge.services.capture", str(config), "--camera", "cam0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    plc = None
    if trigger == "triggered":  # a triggered camera takes frames only when parts come: edge-trigger
        plc = subprocess.Popen([*python, "edge.trigger", "--config", str(config), "--camera", "cam0",
                                "--rate", "10"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        calibrate = subprocess.run([*python, "edge.calibration.cli", "--config", str(config), "--quiet"],
                                   capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        for process in (plc, capture):
            if process is not None:
                process.send_signal(signal.SIGTERM)
        capture_log, _ = capture.communicate(timeout=30)
        trigger_log = plc.communicate(timeout=30)[1] if plc is not None else ""
    assert calibrate.returncode == 0, calibrate.stderr + capture_log
    assert capture.returncode == 0, capture_log
    assert BankStore(bank).active_version() is not None
    after = subprocess.run([sys.executable, "-m", "edge.services.supervisor", str(config), "--check-config"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert after.returncode == 0, after.stderr
    if plc is not None:
        assert plc.returncode == 130 and "triggers sent, 0 not sent" in trigger_log, trigger_log


def test_edge_trigger_counts_what_no_capture_took_and_refuses_bad_usage(tmp_path):
    options = ["--count", "2", "--rate", "50", "--send-timeout", "0.2"]
    command = [sys.executable, "-m", "edge.trigger", f"ipc://{tmp_path}/nobody", *options]
    nobody = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 3 and "0 triggers sent, 2 not sent" in nobody.stderr, nobody.stderr
    for bad in (["x", "--rate", "0"], [], ["x", "--config", "y.yaml"]):
        usage = subprocess.run(
            [sys.executable, "-m", "edge.trigger", *bad], capture_output=True, text=True, timeout=60
        )
        assert usage.returncode == 2 and "Traceback" not in usage.stderr, usage.stderr
