"""Prometheus metrics of one station process, served over HTTP for the plant's monitoring.

Counters the pipeline objects already keep (frames in and out, drops, malformed messages by kind,
timeouts, camera reopens) are read when Prometheus scrapes, so the hot loops pay nothing for them;
what needs every event (per-stage latency, score, verdicts by kind) is observed per verdict. Every
process has its own registry, so tests can run several components in one process.

Names: edge_frames_in_total, edge_frames_out_total, edge_frames_dropped_total, edge_errors_total{kind},
edge_verdicts_total{verdict}, edge_stage_latency_seconds{stage}, edge_score_ratio (score / threshold),
edge_bank{bank="<bank_id>/<version>"} 1, edge_bank_reloads_total, edge_queue_depth,
edge_camera_up, edge_camera_state{state}, edge_camera_reconnects_total (streaming again after a loss),
edge_camera_reopen_attempts_total, edge_camera_stale_total, edge_parts_failed_total{reason},
edge_parts_unannounced_total, edge_timeouts_total,
edge_late_verdicts_total; every one labelled with
station, component and (capture) camera; plus the process_* metrics (resident memory, CPU).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:  # the publisher and capture processes never import torch
    from edge.pipeline.broker import Broker
    from edge.pipeline.capture import Capture
    from edge.pipeline.publisher import Publisher
    from edge.pipeline.worker import Worker
    from edge.protocol import VerdictMessage

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)  # 1.0: the threshold


class _Snapshot:
    """A collector that turns a process's own counters into metrics at scrape time."""

    def __init__(self, labels: dict[str, str], read: Callable[[], list[tuple]]):
        self.labels = labels
        self.read = read

    def collect(self) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())
        for kind, name, documentation, value, *key_label in self.read():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            if isinstance(value, Tally | dict):  # one sample per key, e.g. malformed messages by kind
                metric = family(name, documentation, labels=[*names, *(key_label or ["kind"])])
                for key, count in sorted(value.items()):
                    metric.add_metric([*values, str(key)], float(count))
            else:
                metric = family(name, documentation, labels=names)
                metric.add_metric(values, float(value))
            yield metric


class ProcessMetrics:
    def __init__(self, component: str, station: str, **labels: str) -> None:
        self.labels = {"station": station, "component": component, **labels}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.server: Any = None  # the HTTP server, once serving

    def snapshot(self, read: Callable[[], list[tuple]]) -> None:
        """`read` returns (counter|gauge, name, help, value[, label for a mapping's keys]) tuples."""
        self.registry.register(_Snapshot(self.labels, read))

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve /metrics; returns the port (useful with port 0)."""
        self.server, _ = start_http_server(port, addr=address, registry=self.registry)
        return self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def for_worker(worker: Worker, station: str) -> ProcessMetrics:
    """One worker's metrics; a pool worker's carry its name (label `worker`)."""
    name = worker.settings.pool_name
    metrics = ProcessMetrics("worker", station, **({"worker": name} if name else {}))
    names, values = list(metrics.labels), list(metrics.labels.values())
    verdicts = Counter(
        "edge_verdicts", "Verdicts sent, by verdict", [*names, "verdict"], registry=metrics.registry
    )
    stages = Histogram(
        "edge_stage_latency_seconds",
        "Time per frame in each stage of the worker",
        [*names, "stage"],
        buckets=LATENCY_BUCKETS,
        registry=metrics.registry,
    )
    scores = Histogram(
        "edge_score_ratio",
        "Image score divided by the bank's threshold (above 1: NOK)",
        names,
        buckets=SCORE_BUCKETS,
        registry=metrics.registry,
    )

    def observe(verdict: VerdictMessage) -> None:
        verdicts.labels(*values, verdict.verdict.value).inc()
        for stage, milliseconds in verdict.latency_ms.items():
            stages.labels(*values, stage).observe(milliseconds / 1000)
        if verdict.score is not None and verdict.threshold:
            scores.labels(*values).observe(verdict.score / verdict.threshold)

    worker.observers.append(observe)
    metrics.snapshot(
        lambda: [
            ("counter", "edge_frames_in", "Frame messages received", worker.counters.frames_in),
            ("counter", "edge_frames_out", "Verdicts sent", worker.counters.verdicts_out),
            ("counter", "edge_errors", "Malformed frame messages, by kind", worker.counters.malformed),
            ("counter", "edge_bank_reloads", "Bank versions swapped in", worker.counters.reloads),
            ("gauge", "edge_queue_depth", "Frames taken in the latest micro-batch", worker.last_batch),
            (
                "gauge",
                "edge_bank",
                "The bank scoring now",
                {f"{worker.bank.bank_id}/{worker.bank.version}": 1},
                "bank",
            ),
            *_recorder_samples(worker),
        ]
    )
    return metrics


def _recorder_samples(worker: Worker) -> list[tuple]:
    if worker.recorder is None:
        return []
    counters = worker.recorder.counters
    return [
        ("counter", "edge_recent_frames_kept", "Frames kept for edge-view", counters.kept),
        ("counter", "edge_recent_frames_skipped", "Frames to keep skipped: the writer was behind",
         counters.skipped),
        ("counter", "edge_recent_frames_failed", "Frames the ring could not write, by reason",
         counters.failed, "reason"),
    ]  # fmt: skip


def for_broker(broker: Broker, station: str) -> ProcessMetrics:
    metrics = ProcessMetrics("broker", station)
    counters = broker.counters
    metrics.snapshot(
        lambda: [
            ("counter", "edge_frames_in", "Frames received from the captures", counters.frames_in),
            ("counter", "edge_frames_out", "Frames sent to workers (resends included)", counters.frames_out),
            ("counter", "edge_frames_resent", "Triggered frames sent again after their worker died",
             counters.resent),
            ("counter", "edge_frames_lost", "Frames on a worker that died, not sent again, by trigger mode",
             {"free_run": counters.lost_free_run, "triggered": counters.lost_triggered}, "trigger"),
            ("counter", "edge_workers_died", "Workers declared dead (silent or unreachable)",
             counters.workers_died),
            ("counter", "edge_errors", "Malformed worker reports and requests, by kind", counters.malformed),
            ("gauge", "edge_workers", "Workers connected, by state", broker.worker_states(), "state"),
            ("gauge", "edge_worker_in_flight", "Frames sent to a worker and not yet answered",
             broker.in_flight(), "worker"),
        ]
    )  # fmt: skip
    return metrics


def for_publisher(publisher: Publisher, station: str) -> ProcessMetrics:
    metrics = ProcessMetrics("publisher", station)
    metrics.snapshot(
        lambda: [
            ("counter", "edge_frames_out", "Verdicts published", publisher.counters.published),
            ("counter", "edge_timeouts", "TIMEOUT verdicts for announced parts", publisher.counters.timeouts),
            (
                "counter",
                "edge_late_verdicts",
                "Verdicts dropped: their part was answered",
                publisher.ledger.late,
            ),
            ("counter", "edge_errors", "Malformed results, by kind", publisher.counters.malformed),
            (
                "gauge",
                "edge_queue_depth",
                "Announced parts awaiting a verdict",
                publisher.ledger.awaited,
            ),
        ]
    )
    return metrics


def for_capture(capture: Capture, station: str) -> ProcessMetrics:
    from edge.pipeline.camera_state import STREAMING

    metrics = ProcessMetrics("capture", station, camera=capture.settings.camera)
    health = capture.source.health.snapshot
    metrics.snapshot(
        lambda: [
            ("counter", "edge_frames_in", "Frames taken from the camera", capture.seq),
            ("counter", "edge_frames_out", "Frames sent to the worker", capture.counters.sent),
            ("counter", "edge_frames_dropped", "Free run: frames replaced unsent", capture.counters.dropped),
            (
                "counter",
                "edge_camera_stale",
                "Times the camera gave no frame for stale_after_s",
                capture.counters.stale,
            ),
            ("gauge", "edge_camera_up", "1 while the camera streams", int(health().state == STREAMING)),
            (
                "gauge",
                "edge_camera_state",
                "The camera's state (1 for the current one)",
                {health().reported(capture.settings.stale_after_s): 1},
                "state",
            ),
            (
                "counter",
                "edge_camera_reconnects",
                "Times the camera streamed again after a loss",
                capture.source.health.reconnects,
            ),
            (
                "counter",
                "edge_camera_reopen_attempts",
                "Attempts to open the camera (successful or not)",
                capture.source.health.attempts,
            ),
            (
                "counter",
                "edge_camera_incomplete",
                "Camera buffers not inspected (incomplete), by status",
                capture.source.health.incomplete,
                "status",
            ),
            (
                "counter",
                "edge_errors",
                "Malformed trigger messages, by kind",
                capture.counters.malformed_triggers,
            ),
            (
                "counter",
                "edge_parts_failed",
                "Triggered parts answered ERROR by capture (no frame in time), by reason",
                capture.counters.failed,
                "reason",
            ),
            (
                "counter",
                "edge_parts_unannounced",
                "Triggered parts the publisher could not be told of",
                capture.counters.unannounced,
            ),
            (
                "gauge",
                "edge_queue_depth",
                "Free run: frames waiting to be sent",
                int(capture.pending is not None),
            ),
        ]
    )
    return metrics
