"""A plant's MES or PLC gateway installs `pip install edge` (no extras): pyzmq and numpy, no torch.

A fresh venv, the project installed from this checkout as a user would, and its edge-tail
listening to a real publisher (run by this test from the full install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.protocol import Verdict, VerdictMessage, encode_result

REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 150


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def venv_with(venv: Path, extras: str = "") -> Path:
    """A fresh venv with this checkout installed as a user would, with `extras` (comma-separated)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    target = f"{REPO}[{extras}]" if extras else str(REPO)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir", target],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    return venv_with(tmp_path_factory.mktemp("light") / "venv")


def test_the_base_install_is_small_and_has_no_ml_stack(light_venv):
    size = folder_mb(light_venv)
    print(f"venv with `pip install edge` (no extras): {size:.0f} MB")
    assert size < LIMIT_MB
    python = str(light_venv / "bin" / "python")
    check = "import sys, edge.client, edge.tail, edge.keys, edge.protocol; print(sorted(sys.modules))"
    modules = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    for heavy in ("torch", "cv2", "pydantic", "yaml", "scipy"):
        assert f"'{heavy}'" not in modules.stdout
    for module in ("torch", "cv2", "sklearn"):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
        assert found.returncode != 0, f"{module} should not be installed"


def test_light_commands_run_and_station_commands_say_which_extra(light_venv):
    bin_ = light_venv / "bin"
    for command in ("edge-tail", "edge-trigger", "edge-keys"):
        result = subprocess.run([str(bin_ / command), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage" in result.stdout
    bridge = ["tcp://127.0.0.1:5556", "--station", "s", "--plc", "127.0.0.1"]
    for command, args, extra in (
        ("edge-eval", ["--help"], "eval"),
        ("edge-run", ["--help"], "station"),
        ("edge-modbus-bridge", bridge, "plc"),
    ):
        result = subprocess.run([str(bin_ / command), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"pip install 'edge[{extra}]'" in result.stderr and "Traceback" not in result.stderr


def test_light_edge_tail_hears_a_real_publisher(light_venv, tmp_path):
    settings = PublisherSettings("s", f"ipc://{tmp_path}/results", f"ipc://{tmp_path}/pub", startup_hold_s=0)
    publisher = Publisher(settings)
    stop = threading.Event()
    running = threading.Thread(target=publisher.run, args=(stop,))
    running.start()
    tail = subprocess.Popen(
        [str(light_venv / "bin" / "edge-tail"), settings.publish_endpoint, "--json", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    import zmq

    context = zmq.Context()
    worker = context.socket(zmq.PUSH)
    worker.connect(settings.results_endpoint)
    try:
        for number in range(100):  # until the subscription has reached the publisher
            verdict = VerdictMessage("s", "cam0", f"f{number}", Verdict.NOK, "t", 1, score=3.0, threshold=1.0)
            worker.send_multipart(encode_result(verdict, None))
            if tail.poll() is not None:
                break
            time.sleep(0.2)
        out, err = tail.communicate(timeout=30)
    finally:
        stop.set()
        running.join(10)
        worker.close(linger=0)
        context.term()
    assert tail.returncode == 0, err
    assert '"verdict": "NOK"' in out and '"camera": "cam0"' in out


def test_the_view_install_reads_and_switches_a_bank_store_without_torch(tmp_path_factory, bank_store):
    """`pip install 'edge[view]'` (aiohttp, safetensors; no torch, no OpenCV) runs edge-view and does
    what its bank panel does: list the versions with their reports and activate one."""
    venv = venv_with(tmp_path_factory.mktemp("view") / "venv", "view")
    help_ = subprocess.run(
        [str(venv / "bin" / "edge-view"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_.returncode == 0 and "--tokens" in help_.stdout
    store = tmp_path_factory.mktemp("store") / "banks"
    shutil.copytree(bank_store.root, store)
    check = (
        "import sys; from edge.bankstore import BankStore; from edge.view.actions import Actions;"
        f"s = BankStore({str(store)!r}); s.activate('v0001', by='ben');"
        "print(s.reports()[0]['active'], s.history()[-1]['by'], Actions(s, None).can_build,"
        "'torch' in sys.modules, 'cv2' in sys.modules)"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "ben", "False", "False", "False"]
    assert (
        subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode
        != 0
    )


def test_the_bridges_install_reads_its_station_config_without_torch_or_opencv(tmp_path_factory, tmp_path):
    """`pip install 'edge[opcua,mqtt]'` (asyncua, paho-mqtt, prometheus-client, pyyaml, pydantic)
    runs both bridges, reads their section of a station configuration and imports no ML stack."""
    venv = venv_with(tmp_path_factory.mktemp("bridges") / "venv", "opcua,mqtt")
    for command, option in (
        ("edge-mqtt-bridge", "--topic-root"),
        ("edge-opcua-bridge", "--make-certificate"),
    ):
        help_ = subprocess.run(
            [str(venv / "bin" / command), "--help"], capture_output=True, text=True, timeout=60
        )
        assert help_.returncode == 0 and option in help_.stdout, help_.stderr
    certificate = [str(tmp_path / "k.pem"), str(tmp_path / "c.der")]
    made = subprocess.run(
        [str(venv / "bin" / "edge-opcua-bridge"), "--make-certificate", *certificate],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0 and (tmp_path / "c.der").stat().st_size > 500, made.stderr
    config = tmp_path / "station.yaml"
    config.write_text(
        "station: line1\nbank: {path: /nonexistent}\n"
        "endpoints: {frames: 'ipc:///tmp/f', results: 'ipc:///tmp/r', publish: 'tcp://*:5556', latest: 'tcp://*:5557'}\n"
        "cameras: [{name: cam0, source: {kind: folder, path: /nonexistent}}]\n"
        "bridges: {mqtt: {broker: 'mqtt.site:1883', topic_root: acme/plant1}}\n"
    )  # fmt: skip
    check = (
        "import sys, asyncua; from pathlib import Path;"
        "from edge.bridges.base import link_from_config, host_port;"
        f"s, m = link_from_config(Path({str(config)!r}), 'mqtt');"
        "print(s.station_endpoint, s.query_endpoint, *host_port(m.broker, 1883), m.topic_root,"
        "'torch' in sys.modules, 'cv2' in sys.modules)"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", "mqtt.site", "1883", "acme/plant1", "False", "False"
    ]  # fmt: skip
    for module in ("torch", "cv2"):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} should not be installed"


def test_the_light_install_runs_its_own_tests(light_venv):
    """The tests of what the light install ships (the wire protocol, the layers, the documents held
    to the code) run in it, with pytest and nothing else added: no torch, no pydantic."""
    added = subprocess.run([str(light_venv / "bin" / "pip"), "install", "--quiet", "pytest"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert added.returncode == 0, added.stderr
    result = subprocess.run(
        [str(light_venv / "bin" / "pytest"), "tests/unit", "-m", "light", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(result.stdout.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 50, result.stdout[-500:]
    for module in ("torch", "pydantic"):
        found = subprocess.run(
            [str(light_venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True
        )
        assert found.returncode != 0, f"{module} should not be in the light install"
