"""Station operations: systemd notification and watchdog, Prometheus metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import yaml
import zmq
from prometheus_client.parser import text_string_to_metric_families
from station_kit import wait_until

from edge.lifecycle import Watchdog, notify
from edge.metrics import for_broker, for_capture, for_publisher, for_worker
from edge.pipeline.broker import Broker, BrokerSettings
from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.inspection import Bank
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.sources import SyntheticSource
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, encode_frame


@pytest.fixture
def systemd_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's notify socket; yields a reader of its messages."""
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    def messages(seconds: float) -> list[tuple[float, str]]:
        end = time.monotonic() + seconds
        received = []
        while (left := end - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                received.append((time.monotonic(), server.recv(4096).decode()))
            except TimeoutError:
                break
        return received

    yield messages
    server.close()


def test_notify_outside_systemd_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify("READY=1") is False and not Watchdog().enabled


def test_a_service_reports_ready_feeds_the_watchdog_and_says_stopping(tmp_path, systemd_socket):
    config = tmp_path / "station.yaml"
    (tmp_path / "bank.edge").write_bytes(b"x")
    config.write_text(
        yaml.safe_dump(
            {
                "station": "s",
                "bank": {"path": str(tmp_path / "bank.edge")},
                "endpoints": {k: f"ipc://{tmp_path}/{k}" for k in ("frames", "results", "publish")},
                "cameras": [{"name": "c", "source": {"kind": "synthetic"}}],
            }
        )
    )
    env = dict(os.environ, WATCHDOG_USEC="200000")  # 0.2 s: fed every 0.1 s
    publisher = subprocess.Popen([sys.executable, "-m", "edge.services.publisher", str(config)], env=env)
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 30
        while not any(m.startswith("READY=1") for m in messages) and time.monotonic() < deadline:
            messages += [m for _, m in systemd_socket(0.5)]
        beats = [t for t, m in systemd_socket(1.0) if m == "WATCHDOG=1"]
        publisher.send_signal(signal.SIGTERM)
        last = [m for _, m in systemd_socket(2.0)]
        assert publisher.wait(30) == 0
    finally:
        publisher.kill()
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=publishing on ipc://" in ready
    assert 6 <= len(beats) <= 12 and max(np.diff(beats)) < 0.2  # every 0.1 s, never a 0.2 s gap
    assert any(m.startswith("STOPPING=1") for m in last)


def test_the_watchdog_stops_while_inference_is_stuck(tmp_path, systemd_socket, monkeypatch, fitted_model):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # fed every 50 ms while the loop makes progress
    gate, entered = threading.Event(), threading.Event()

    class StuckModel:
        placement = fitted_model.placement
        device = fitted_model.device

        def score(self, images, timer=None):
            entered.set()
            gate.wait()
            return fitted_model.score(images, timer)

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/results")
    worker = Worker(
        Bank(StuckModel(), 1e9, "b", "1"),
        WorkerSettings("s", f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/results"),
        context,
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop, Watchdog().progress))
    running.start()
    idle = [t for t, m in systemd_socket(1.0) if m == "WATCHDOG=1"]  # an idle step lasts 0.1 s
    sender = context.socket(zmq.PUSH)
    sender.connect(f"ipc://{tmp_path}/frames")
    image = np.zeros((64, 64), np.uint8)
    sender.send_multipart(encode_frame(FrameHeader("s", "c", 0, "f0", "t", 0, 64, 64, 1), image))
    assert entered.wait(5)  # the frame is in the stuck model's hands
    systemd_socket(0.15)  # pings sent before it took the frame, still queued, are not "stuck" ones
    stuck = [t for t, m in systemd_socket(0.6) if m == "WATCHDOG=1"]
    gate.set()
    resumed = [t for t, m in systemd_socket(1.0) if m == "WATCHDOG=1"]
    stop.set()
    running.join(10)
    assert pull.poll(5000)  # the frame was answered once the model came back
    context.destroy(linger=0)
    assert len(idle) >= 5 and stuck == [] and len(resumed) >= 5


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (
            sample.name,
            tuple(
                sorted(
                    (k, v) for k, v in sample.labels.items() if k not in ("station", "component", "camera")
                )
            ),
        ): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoints_count_a_streamed_run(tmp_path, fitted_model, synthetic_category):
    context = zmq.Context()
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub")}
    publisher = Publisher(PublisherSettings("s", endpoints["results"], endpoints["pub"]), context)
    worker = Worker(
        Bank(fitted_model, 100.0, "synthetic", "v7"),
        WorkerSettings("s", endpoints["frames"], endpoints["results"]),
        context,
    )
    capture = Capture(
        SyntheticSource(160, count=12, seed=1), CaptureSettings("s", "cam", endpoints["frames"]), context
    )
    metrics = [for_worker(worker, "s"), for_publisher(publisher, "s"), for_capture(capture, "s")]
    ports = [m.serve(0, "127.0.0.1") for m in metrics]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (publisher, worker)]
    for thread in threads:
        thread.start()
    capture.run(threading.Event())  # 12 frames, free run: some may be replaced while the worker is busy
    raw = context.socket(zmq.PUSH)
    raw.connect(endpoints["frames"])
    for _ in range(3):
        raw.send_multipart([b"frame", b"{not json", b""])
    deadline = time.monotonic() + 60
    while worker.counters.frames_in < capture.counters.sent + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = capture.counters.sent
    wait_until(lambda: publisher.counters.published >= sent, 30, "every scored frame's verdict published")
    worker_metrics, publisher_metrics, capture_metrics = (scrape(p) for p in ports)
    stop.set()
    for thread in threads:
        thread.join(10)
    for m in metrics:
        m.close()
    capture.close()
    raw.close()
    context.destroy(linger=0)

    assert capture_metrics[("edge_frames_in_total", ())] == 12
    assert capture_metrics[("edge_frames_out_total", ())] == sent
    assert capture_metrics[("edge_frames_dropped_total", ())] == 12 - sent
    assert worker_metrics[("edge_frames_in_total", ())] == sent + 3
    assert worker_metrics[("edge_errors_total", (("kind", "json"),))] == 3
    verdicts = sum(v for (name, _), v in worker_metrics.items() if name == "edge_verdicts_total")
    assert verdicts == sent == worker_metrics[("edge_frames_out_total", ())]
    assert worker_metrics[("edge_stage_latency_seconds_count", (("stage", "extract"),))] == sent
    assert worker_metrics[("edge_score_ratio_count", ())] == sent
    assert worker_metrics[("edge_bank", (("bank", "synthetic/v7"),))] == 1
    assert publisher_metrics[("edge_frames_out_total", ())] == sent
    assert worker_metrics[("process_resident_memory_bytes", ())] > 100e6


def test_logs_carry_journal_priorities_under_systemd():
    command = [sys.executable, "-m", "edge.calibration.cli"]  # fails at once: no store given
    journal = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, JOURNAL_STREAM="8:1")
    )
    plain = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
    )
    assert journal.returncode == plain.returncode == 2
    assert journal.stderr.startswith("<3>edge: say where the bank store is")
    assert " ERROR edge: say where the bank store is" in plain.stderr


def test_an_idle_broker_exports_each_of_its_families(tmp_path):
    """Read at scrape time from the broker's public counters: one renamed fails the scrape here."""
    context = zmq.Context()
    broker = Broker(BrokerSettings("s", f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/workers"), context)
    metrics = for_broker(broker, "s")
    port = metrics.serve(0, "127.0.0.1")
    try:
        families = {name for name, _ in scrape(port)}
    finally:
        metrics.close()
        broker.close()
        context.destroy(linger=0)
    for family in ("edge_frames_in_total", "edge_frames_out_total", "edge_frames_resent_total",
                   "edge_workers_died_total", "edge_workers"):  # fmt: skip
        assert family in families, sorted(families)
