"""Capture: frames from a source, stamped and sent to the worker (PUSH).

free_run: the line does not wait for us. When the worker is behind, only the newest frame waits
to be sent (besides the one the socket's one-slot queue may hold); each frame replaced unsent is
counted as dropped. triggered: every frame is a part
and is never dropped; it waits for the worker (and its deadline makes the worker answer TIMEOUT
if it comes too late).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import zmq

from edge.imageio import to_uint8
from edge.pipeline.sources import FrameSource
from edge.protocol import FrameHeader, encode_expect, encode_frame

log = logging.getLogger("edge.capture")


@dataclass(frozen=True)
class CaptureSettings:
    station: str
    camera: str
    frames_endpoint: str  # the worker's bound PULL
    trigger: str = "free_run"
    deadline_ms: float | None = None
    stale_after_s: float = 5.0
    expect_endpoint: str | None = None  # the publisher's results PULL: triggered frames are announced there


@dataclass
class CaptureCounters:
    sent: int = 0
    dropped: int = 0
    stale: int = 0


class Capture:
    def __init__(self, source: FrameSource, settings: CaptureSettings, context: zmq.Context | None = None):
        self.source = source
        self.settings = settings
        self.counters = CaptureCounters()
        self.seq = 0
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.pending: list | None = None
        self.socket = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, 1 if settings.trigger == "free_run" else 10_000)
        self.socket.setsockopt(zmq.LINGER, 5000)
        self.socket.connect(settings.frames_endpoint)
        self.announce = None
        if settings.trigger == "triggered" and settings.expect_endpoint:
            self.announce = (context or zmq.Context.instance()).socket(zmq.PUSH)
            self.announce.setsockopt(zmq.LINGER, 5000)
            self.announce.connect(settings.expect_endpoint)
        self.last_frame = time.monotonic()

    def frame_id(self, seq: int) -> str:
        return f"{self.settings.camera}-{self.run_id}-{seq}"

    def stamp(self, pixels: np.ndarray, part_id: str | None = None) -> tuple[FrameHeader, list]:
        pixels = to_uint8(pixels)
        header = FrameHeader(
            station=self.settings.station,
            camera=self.settings.camera,
            seq=self.seq,
            frame_id=self.frame_id(self.seq),
            capture_utc=datetime.now(UTC).isoformat(),
            capture_monotonic_ns=time.monotonic_ns(),
            height=pixels.shape[0],
            width=pixels.shape[1],
            channels=1 if pixels.ndim == 2 else 3,
            trigger=self.settings.trigger,
            part_id=part_id,
            deadline_ms=self.settings.deadline_ms,
        )
        self.seq += 1
        return header, encode_frame(header, pixels)

    def _flush(self) -> None:
        if self.pending is None:
            return
        try:
            self.socket.send_multipart(self.pending, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        self.pending = None
        self.counters.sent += 1

    def offer(self, pixels: np.ndarray, part_id: str | None = None) -> None:
        """Send one frame by the trigger mode's rule."""
        header, message = self.stamp(pixels, part_id)
        self.last_frame = time.monotonic()
        if self.settings.trigger == "triggered":
            if self.announce is not None:
                self.announce.send_multipart(encode_expect(header))
            self.socket.send_multipart(message, copy=False)  # blocks while the worker is behind
            self.counters.sent += 1
            return
        if self.pending is not None:
            self._flush()
        if self.pending is not None:
            self.counters.dropped += 1  # keep newest: the older unsent frame is replaced
        self.pending = message
        self._flush()

    def run(self, stop: threading.Event) -> CaptureCounters:
        while not stop.is_set() and not self.source.exhausted:
            pixels = self.source.read()
            if pixels is None:
                self._flush()
                if time.monotonic() - self.last_frame > self.settings.stale_after_s:
                    self.counters.stale += 1
                    log.warning(
                        "camera %s: no frame for %.1f s", self.settings.camera, self.settings.stale_after_s
                    )
                    self.last_frame = time.monotonic()
                time.sleep(0.002)
                continue
            self.offer(pixels)
        while self.pending is not None and not stop.is_set():
            self._flush()
            time.sleep(0.002)
        return self.counters

    def close(self) -> None:
        self.source.close()
        self.socket.close()
        if self.announce is not None:
            self.announce.close()
