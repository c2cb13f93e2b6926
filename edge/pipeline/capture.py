"""Capture: frames from a source, stamped and sent to the worker (PUSH).

free_run: the line does not wait for us. When the worker is behind, only the newest frame waits
to be sent (besides the one the socket's one-slot queue may hold); each frame replaced unsent is
counted as dropped. triggered: every frame is a part, taken when a trigger message names it
(a PLC bridge or the MES sends them to `trigger_endpoint`). A part is never dropped: its frame
waits for the worker, and it is announced to the publisher, which answers TIMEOUT if no verdict
comes by its deadline; a part whose camera gives no frame gets an ERROR verdict from here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import zmq

from edge.imageio import to_uint8
from edge.pipeline.sources import FrameSource
from edge.protocol import (
    FrameHeader,
    ProtocolError,
    Verdict,
    VerdictMessage,
    decode_trigger,
    encode_expect,
    encode_frame,
    encode_result,
)
from edge.security import CurveClient
from edge.sockets import REQUEST_BYTES, ErrorTally, open_socket

log = logging.getLogger("edge.capture")
IDLE_SLEEP_S = 0.002
FLUSH_ON_STOP_S = 2.0  # free run: how long the last frame may wait for the worker at shutdown


@dataclass(frozen=True)
class CaptureSettings:
    station: str
    camera: str
    frames_endpoint: str  # the worker's bound PULL
    trigger: str = "free_run"
    deadline_ms: float | None = None
    stale_after_s: float = 5.0
    expect_endpoint: str | None = None  # the publisher's results PULL: triggered frames are announced there
    trigger_endpoint: str | None = None  # triggered: bound PULL for trigger messages
    curve: CurveClient | None = None  # when the worker is on another host


@dataclass
class CaptureCounters:
    sent: int = 0
    dropped: int = 0
    stale: int = 0
    failed: int = 0  # triggered parts answered ERROR here: the camera gave no frame
    malformed_triggers: ErrorTally = field(default_factory=lambda: ErrorTally("trigger", log))


class Capture:
    def __init__(self, source: FrameSource, settings: CaptureSettings, context: zmq.Context | None = None):
        context = context or zmq.Context.instance()
        self.source = source
        self.settings = settings
        self.counters = CaptureCounters()
        self.seq = 0
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.pending: list | None = None
        self.socket = open_socket(
            context,
            zmq.PUSH,
            settings.frames_endpoint,
            bind=False,
            max_message_bytes=None,
            linger_ms=5000,
            send_hwm=1 if settings.trigger == "free_run" else 10_000,
            curve=settings.curve,
        )
        self.announce = None
        if settings.trigger == "triggered" and settings.expect_endpoint:
            self.announce = open_socket(
                context,
                zmq.PUSH,
                settings.expect_endpoint,
                bind=False,
                max_message_bytes=None,
                linger_ms=5000,
            )
        self.triggers = None
        if settings.trigger == "triggered" and settings.trigger_endpoint:
            self.triggers = open_socket(
                context, zmq.PULL, settings.trigger_endpoint, bind=True, max_message_bytes=REQUEST_BYTES
            )
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

    def fail(self, part_id: str, reason: str) -> None:
        """A triggered part that cannot be inspected: its ERROR verdict goes straight to the publisher."""
        self.counters.failed += 1
        log.error("camera %s: part %s not inspected: %s", self.settings.camera, part_id, reason)
        if self.announce is None:
            return
        verdict = VerdictMessage(
            station=self.settings.station,
            camera=self.settings.camera,
            frame_id=self.frame_id(self.seq),
            part_id=part_id,
            verdict=Verdict.ERROR,
            capture_utc=datetime.now(UTC).isoformat(),
            capture_monotonic_ns=time.monotonic_ns(),
            error=reason,
        )
        self.seq += 1
        self.announce.send_multipart(encode_result(verdict, None))

    def _check_stale(self) -> None:
        if time.monotonic() - self.last_frame > self.settings.stale_after_s:
            self.counters.stale += 1
            log.warning("camera %s: no frame for %.1f s", self.settings.camera, self.settings.stale_after_s)
            self.last_frame = time.monotonic()

    def _grab(self) -> np.ndarray | None:
        """The camera's next frame for a triggered part, waiting at most stale_after_s."""
        give_up = time.monotonic() + self.settings.stale_after_s
        while time.monotonic() < give_up and not self.source.exhausted:
            pixels = self.source.read()
            if pixels is not None:
                return pixels
            time.sleep(IDLE_SLEEP_S)
        return None

    def _take_trigger(self, timeout_ms: int) -> bool:
        """Serve one trigger (if one comes within `timeout_ms`); False if its part got no frame."""
        assert self.triggers is not None, "a triggered camera has its trigger socket"
        if not self.triggers.poll(timeout_ms):
            return True
        parts = self.triggers.recv_multipart()
        try:
            part_id = decode_trigger(parts)
        except ProtocolError as error:
            self.counters.malformed_triggers.count(error)
            return True
        fire = getattr(self.source, "trigger", None)  # a camera with a trigger of its own
        if fire is not None:
            fire()
        pixels = self._grab()
        if pixels is None:
            self.fail(part_id, f"camera gave no frame within {self.settings.stale_after_s:.1f} s")
            self._check_stale()
            return False
        self.offer(pixels, part_id)
        return True

    def _stream(self, stop: threading.Event, progress: Callable[[], None]) -> None:
        while not stop.is_set() and not self.source.exhausted:
            pixels = self.source.read()
            if pixels is None:
                self._flush()
                self._check_stale()
                time.sleep(IDLE_SLEEP_S)
                continue
            self.offer(pixels)
            progress()

    def _serve_triggers(self, stop: threading.Event, progress: Callable[[], None]) -> None:
        assert self.triggers is not None
        while not stop.is_set():
            if self._take_trigger(100):
                progress()
        while self.triggers.poll(0):  # parts already triggered when the stop came are still inspected
            self._take_trigger(0)

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> CaptureCounters:
        """Until `stop` (or a finite source's end): stream (free run) or serve triggers (triggered).
        `progress` is called for every frame sent, and while waiting for triggers; not while the
        camera gives nothing."""
        if self.triggers is not None:
            self._serve_triggers(stop, progress)
        else:
            self._stream(stop, progress)
        give_up = time.monotonic() + FLUSH_ON_STOP_S
        while self.pending is not None and time.monotonic() < give_up:
            self._flush()
            time.sleep(IDLE_SLEEP_S)
        if self.pending is not None:
            self.counters.dropped += 1
            self.pending = None
        return self.counters

    def close(self) -> None:
        self.source.close()
        for socket in (self.socket, self.announce, self.triggers):
            if socket is not None:
                socket.close()
