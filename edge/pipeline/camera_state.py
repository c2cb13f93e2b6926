"""A camera's frames and health as its source sees them.

`Frame`: pixels stamped with the moment they left the camera or stream (not when capture got round
to reading them), so a triggered part is matched with the first frame taken after its trigger.
`CameraHealth`: starting, streaming, reconnecting (with the reason) or ended, since when, the frame
size, and the reopen attempts and successful reconnects; the capture process reports it
(heartbeat, metrics, logs) and answers triggers from it. `RecentFrames`: the newest few frames of a
camera read by a thread of its own, so that frames never wait in a driver's or FFmpeg's buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

log = logging.getLogger("edge.capture")
STARTING, STREAMING, RECONNECTING, ENDED = "starting", "streaming", "reconnecting", "ended"
GONE = "gone"  # reconnecting (or never opened) for longer than the camera's stale_after_s
RECENT_FRAMES = 4  # a reader thread keeps this many: the first after a trigger is among them


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray
    taken_ns: int  # time.monotonic_ns() when the frame left the camera (or the stream)
    taken_utc: datetime
    number: int | None = None  # the camera's own frame counter, where it has one

    @classmethod
    def now(cls, pixels: np.ndarray, number: int | None = None) -> Frame:
        return cls(pixels, time.monotonic_ns(), datetime.now(UTC), number)

    @classmethod
    def at_wall_clock(cls, pixels: np.ndarray, unix_ns: int, number: int | None = None) -> Frame:
        """A frame the driver stamped with the host's wall clock (Aravis's system timestamp)."""
        age_ns = max(time.time_ns() - unix_ns, 0)
        taken = datetime.now(UTC) - timedelta(microseconds=age_ns / 1000)
        return cls(pixels, time.monotonic_ns() - age_ns, taken, number)


@dataclass(frozen=True)
class HealthSnapshot:
    state: str
    reason: str | None
    since_utc: datetime
    since: float  # time.monotonic()
    width: int | None
    height: int | None
    reconnects: int
    attempts: int

    def reported(self, gone_after_s: float) -> str:
        """The state to report: reconnecting (or starting) for longer than `gone_after_s` is gone."""
        away = self.state in (STARTING, RECONNECTING)
        return GONE if away and time.monotonic() - self.since > gone_after_s else self.state


class CameraHealth:
    """Thread-safe: a source's reader thread writes it, the capture loop reads it."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self._lock = threading.Lock()
        self._state: str = STARTING
        self._reason: str | None = "not opened yet"
        self._since, self._since_utc = time.monotonic(), datetime.now(UTC)
        self._size: tuple[int, int] | None = None
        self.reconnects = 0  # reopened and streaming again after a loss
        self.attempts = 0  # reopen attempts, successful or not
        self.incomplete: Counter[str] = Counter()  # frames not inspected (a GigE buffer incomplete), by why

    def _move(self, state: str, reason: str | None) -> None:
        self._state, self._reason = state, reason
        self._since, self._since_utc = time.monotonic(), datetime.now(UTC)

    def streaming(self) -> None:
        with self._lock:
            if self._state == STREAMING:
                return
            if self._state == RECONNECTING:
                self.reconnects += 1
                log.info("camera %s: streaming again after %.1f s away", self.camera,
                         time.monotonic() - self._since)  # fmt: skip
            else:
                log.info("camera %s: streaming", self.camera)
            self._move(STREAMING, None)

    def lost(self, reason: str) -> None:
        """The camera did not open, or stopped delivering: frames stop until a reopen works."""
        with self._lock:
            if self._state in (STARTING, RECONNECTING):  # still away: since when is kept
                if self._reason != reason:
                    log.warning("camera %s: %s; reconnecting", self.camera, reason)
                    self._reason = reason
                return
            log.warning("camera %s: %s; reconnecting", self.camera, reason)
            self._move(RECONNECTING, reason)

    def attempt(self) -> None:
        with self._lock:
            self.attempts += 1

    def ended(self) -> None:
        with self._lock:
            self._move(ENDED, "the source has no more frames")

    def frame_size(self, width: int, height: int) -> None:
        """A camera that comes back at another size is taken as it is, and the change logged: the
        worker scores every frame at the bank's geometry, and edge-calibrate's report says which."""
        with self._lock:
            if self._size is not None and self._size != (width, height):
                log.warning("camera %s: frame size changed from %dx%d to %dx%d", self.camera, *self._size,
                            width, height)  # fmt: skip
            self._size = (width, height)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            width, height = self._size or (None, None)
            return HealthSnapshot(self._state, self._reason, self._since_utc, self._since, width, height,
                                  self.reconnects, self.attempts)  # fmt: skip


class RecentFrames:
    """The newest frames a reader thread took, for a capture loop that waits for the first frame
    taken after a moment (a trigger's arrival) or for any newer frame (free run)."""

    def __init__(self) -> None:
        self._frames: deque[Frame] = deque(maxlen=RECENT_FRAMES)
        self._changed = threading.Condition()

    def put(self, frame: Frame) -> None:
        with self._changed:
            self._frames.append(frame)
            self._changed.notify_all()

    def first_after(self, after_ns: int, timeout_s: float) -> Frame | None:
        """The earliest kept frame taken at or after `after_ns`, waiting at most `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        with self._changed:
            while True:
                frame = next((f for f in self._frames if f.taken_ns >= after_ns), None)
                if frame is not None:
                    return frame
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def wake(self) -> None:
        """Let a waiting capture loop look again (the camera was lost: it need not wait on)."""
        with self._changed:
            self._changed.notify_all()
