"""What the operator's page shows, kept from the publisher's events: per camera the latest part,
counts, latency, a score histogram and recent rejects; for the line, its heartbeat and losses.
Pure bookkeeping (no sockets, no HTTP), so it is tested on events alone."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.client import Event
from edge.protocol import Verdict, verdict_body

WINDOW = 500  # parts per camera behind the rates, percentiles and histogram
REJECTS = 24  # latest rejects kept per camera for the gallery
MASKS = 256  # latest masks kept (by frame id), for overlays in the page
HISTOGRAM_BINS = 24  # score / threshold from 0 to 2, the threshold in the middle
SILENT_S = 3.0  # no heartbeat for this long: the page says the publisher is silent


@dataclass
class CameraView:
    name: str
    counts: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # verdict strings
    ratios: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # score / threshold
    latencies: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # total ms
    rejects: deque = field(default_factory=lambda: deque(maxlen=REJECTS))
    latest: dict[str, Any] | None = None
    received_at: float | None = None  # monotonic time of the latest part: a stale camera shows
    state: dict[str, Any] | None = None  # the camera's state in the latest heartbeat

    def add(self, body: dict[str, Any], now: float) -> None:
        verdict = body["verdict"]
        self.latest, self.received_at = body, now
        self.counts[verdict] += 1
        self.recent.append(verdict)
        if body.get("score") is not None and body.get("threshold"):
            self.ratios.append(body["score"] / body["threshold"])
        if "total" in body.get("latency_ms", {}):
            self.latencies.append(body["latency_ms"]["total"])
        if verdict != Verdict.OK.value:
            self.rejects.appendleft(body)

    def summary(self, now: float) -> dict[str, Any]:
        latencies = np.array(self.latencies) if self.latencies else None
        ratios = np.clip(np.array(self.ratios), 0, 2) if self.ratios else np.zeros(0)
        histogram, _ = np.histogram(ratios, bins=HISTOGRAM_BINS, range=(0, 2))
        recent = Counter(self.recent)
        return {
            "name": self.name,
            "camera": self.state,
            "latest": self.latest,
            "age_s": None if self.received_at is None else now - self.received_at,
            "counts": dict(self.counts),
            "rates": {k: v / len(self.recent) for k, v in recent.items()} if self.recent else {},
            "latency_ms": None if latencies is None else {
                "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))},
            "histogram": histogram.tolist(),
            "rejects": list(self.rejects),
        }  # fmt: skip


class LineState:
    """Everything the page shows, from the events a Subscriber delivers (`apply`)."""

    def __init__(self, station: str) -> None:
        self.station = station
        self.cameras: dict[str, CameraView] = {}
        self.masks: OrderedDict[str, bytes] = OrderedDict()
        self.last_heartbeat: float | None = None
        self.epoch: int | None = None
        self.restarts = 0
        self.lost = 0
        self.changes = 0  # increases with every event: the page is redrawn when it moves
        self.frames = False  # recent frames can be shown under the masks (edge-view --recent)

    def apply(self, event: Event, now: float) -> None:
        self.changes += 1
        self.lost += event.gap
        if event.epoch and self.epoch is not None and event.epoch != self.epoch:
            self.restarts += 1  # a new epoch: once per restart, whichever topic shows it first
        self.epoch = event.epoch or self.epoch
        if event.heartbeat is not None:
            self.last_heartbeat = now
            for name, state in event.heartbeat.cameras.items():
                self.cameras.setdefault(name, CameraView(name)).state = state
        elif event.verdict is not None:
            camera = event.verdict.camera
            self.cameras.setdefault(camera, CameraView(camera)).add(verdict_body(event.verdict), now)
        elif event.mask_png is not None and event.frame_id is not None:
            self.masks[event.frame_id] = event.mask_png
            while len(self.masks) > MASKS:
                self.masks.popitem(last=False)

    def snapshot(self, now: float) -> dict[str, Any]:
        silent_for = None if self.last_heartbeat is None else now - self.last_heartbeat
        return {
            "station": self.station,
            "publisher": {
                "alive": silent_for is not None and silent_for < SILENT_S,
                "silent_s": silent_for,
                "epoch": self.epoch,
                "restarts": self.restarts,
                "lost": self.lost,
            },
            "masks": list(self.masks),
            "frames": self.frames,
            "cameras": [self.cameras[name].summary(now) for name in sorted(self.cameras)],
            "changes": self.changes,
        }
