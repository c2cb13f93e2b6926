"""deploy/install.sh: valid shell, a dry run that shows every step, and bad weights refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INSTALL = Path(__file__).parents[2] / "deploy" / "install.sh"


def install(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *arguments], capture_output=True, text=True, timeout=60)


def test_install_script_parses_and_dry_runs():
    assert subprocess.run(["bash", "-n", str(INSTALL)]).returncode == 0
    result = install("--dry-run", "--prefix", "/srv/edge", "--aravis")
    assert result.returncode == 0, result.stderr
    for expected in (
        "useradd --system",
        "install -d -o root -g edge -m 0750 /etc/edge",
        "python3 -m venv /srv/edge/venv",
        "gir1.2-aravis-0.8",
        "[station,plc,mqtt,opcua,view,gige]",
        "/etc/systemd/system/edge-worker.service",
        "/etc/systemd/system/edge-worker@.service",
        "/etc/systemd/system/edge-broker.service",
        "70-edge-cameras.rules",
        "systemctl enable edge.target",
        "--check-config",
    ):
        assert expected in result.stdout, expected


def test_install_refuses_foreign_weights_and_unknown_options(tmp_path):
    wrong = tmp_path / "wide_resnet50_2-9ba9bcbe.pth"
    wrong.write_bytes(b"not the V1 weights")
    result = install("--dry-run", "--weights", str(wrong))
    assert result.returncode == 3 and "not torchvision's wide_resnet50_2 IMAGENET1K_V1" in result.stderr
    assert install("--dry-run", "--colour", "red").returncode == 2


def test_a_dry_run_enables_the_units_edge_run_lists_for_the_station(tmp_path):
    """One process table: install.sh enables what `edge-run --units` lists (a pool, two cameras and
    two bridges here), and nothing else."""
    config = tmp_path / "station.yaml"
    config.write_text(
        "station: line1\nbank: {path: /nonexistent}\n"
        "endpoints: {frames: 'ipc:///tmp/f', results: 'ipc:///tmp/r', publish: 'tcp://*:5556', workers: 'ipc:///tmp/w'}\n"
        "worker: {count: 2}\n"
        "cameras: [{name: top, source: {kind: synthetic}}, {name: side, source: {kind: synthetic}}]\n"
        "bridges: {mqtt: {broker: 'mqtt.site'}, modbus: {plc: '10.0.0.5'}}\n"
    )  # fmt: skip
    path = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--config", str(config)], env=path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    enabled = [
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("+ systemctl enable")
    ]
    assert enabled == [
        "edge.target", "edge-publisher.service", "edge-broker.service", "edge-worker@0.service",
        "edge-worker@1.service", "edge-capture@top.service", "edge-capture@side.service",
        "edge-mqtt-bridge.service", "edge-modbus-bridge.service",
    ]  # fmt: skip
