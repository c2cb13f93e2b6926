"""Frame sources behind one interface: OpenCV cameras and streams, image-folder replay, synthetic
parts (GigE Vision cameras: edge/pipeline/gige.py).

`read()` returns the next frame (uint8 or uint16, HxW or HxWx3 RGB) or None when the source has
nothing now; `exhausted` says a finite source is done. A camera that fails is reopened with
backoff; the reopen count and staleness are the capture process's to report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.errors import ImageError, UsageError
from edge.imageio import IMAGE_SUFFIXES, read_image
from edge.synthetic_parts import DEFECT_TYPES, draw_defect, make_part

log = logging.getLogger("edge.capture")
STREAM_TIMEOUT_MS = 5000  # a network stream that opens or delivers nothing this long is reopened


class FrameSource(Protocol):
    """A camera or replay. A source that can trigger its camera also has `trigger()`, which capture
    calls for each triggered part before it reads the part's frame."""

    exhausted: bool
    reopens: int

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


@dataclass
class LabelledFrame:
    """A synthetic frame and what it truly is, so a demo can measure its detection rate."""

    pixels: np.ndarray
    defect: str | None  # None for a good part


class Pacer:
    """Holds a replayed source to `rate_hz` frames per second (0: as fast as read)."""

    def __init__(self, rate_hz: float) -> None:
        self.period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self.next_due = time.monotonic()

    def wait(self) -> None:
        pause = self.next_due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self.next_due = max(self.next_due + self.period, time.monotonic())


class SyntheticSource:
    """Endless (or `count`) synthetic parts; a `defect_rate` share carries a defect."""

    def __init__(
        self,
        size: int = 256,
        defect_rate: float = 0.2,
        count: int | None = None,
        seed: int = 0,
        rate_hz: float = 0.0,
    ) -> None:
        self.pacer = Pacer(rate_hz)
        self.rng = np.random.default_rng(seed)
        self.size, self.defect_rate, self.remaining = size, defect_rate, count
        self.exhausted = False
        self.reopens = 0
        self.last: LabelledFrame | None = None

    def read(self) -> np.ndarray | None:
        if self.remaining is not None:
            if self.remaining <= 0:
                self.exhausted = True
                return None
            self.remaining -= 1
        self.pacer.wait()
        image = make_part(self.rng, self.size)
        defect = None
        if self.rng.random() < self.defect_rate:
            defect = str(self.rng.choice(DEFECT_TYPES))
            draw_defect(self.rng, image, defect)
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        self.last = LabelledFrame(pixels, defect)
        return pixels

    def close(self) -> None:
        pass


class FolderSource:
    """Replays a folder's images in name order, at `rate_hz` (0: as fast as read), optionally looping."""

    def __init__(self, folder: str | Path, rate_hz: float = 0.0, loop: bool = False) -> None:
        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise UsageError(f"{folder} holds no images to replay")
        self.pacer = Pacer(rate_hz)
        self.unreadable = 0
        self.loop = loop
        self.position = 0
        self.exhausted = False
        self.reopens = 0

    def read(self) -> np.ndarray | None:
        if self.position >= len(self.paths):
            if not self.loop:
                self.exhausted = True
                return None
            self.position = 0
        self.pacer.wait()
        path = self.paths[self.position]
        self.position += 1
        try:
            return read_image(path)
        except ImageError as exc:  # one bad file must not stop a replay
            self.unreadable += 1
            log.error("skipping %s: %s", path, exc)
            return None

    def close(self) -> None:
        pass


class OpenCVSource:
    """A USB/V4L2 camera (index or device path), a video file or stream URL, or a GStreamer pipeline
    where OpenCV has GStreamer. A failed read closes the device and reopens it with backoff."""

    def __init__(self, uri: str | int, backoff_s: tuple[float, float] = (0.5, 10.0)) -> None:
        self.uri = int(uri) if isinstance(uri, str) and uri.isdigit() else uri
        self.backoff_min, self.backoff_max = backoff_s
        self.backoff = self.backoff_min
        self.capture: cv2.VideoCapture | None = None
        self.retry_at = 0.0
        self.exhausted = False
        self.reopens = 0
        self._open()

    def _open(self) -> None:
        if isinstance(self.uri, str) and "://" in self.uri:  # a network stream (RTSP, HTTP): bounded waits
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        STREAM_TIMEOUT_MS]  # fmt: skip
            self.capture = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, timeouts)
        else:
            self.capture = cv2.VideoCapture(self.uri)
        if not self.capture.isOpened():
            self.capture.release()
            self.capture = None
            self.retry_at = time.monotonic() + self.backoff
            log.warning("camera %s did not open; retrying in %.1f s", self.uri, self.backoff)
            self.backoff = min(self.backoff * 2, self.backoff_max)
        else:
            self.backoff = self.backoff_min

    def read(self) -> np.ndarray | None:
        if self.capture is None:
            if time.monotonic() < self.retry_at:
                return None
            self.reopens += 1
            self._open()
            if self.capture is None:
                return None
        ok, frame = self.capture.read()
        if not ok or frame is None:
            log.warning("camera %s delivered no frame; reopening", self.uri)
            self.capture.release()
            self.capture = None
            self.retry_at = time.monotonic() + self.backoff
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


def frames(source: FrameSource, idle_sleep_s: float = 0.005) -> Iterator[np.ndarray]:
    """Iterate a source until it is exhausted (forever for cameras)."""
    while not source.exhausted:
        pixels = source.read()
        if pixels is None:
            if not source.exhausted:
                time.sleep(idle_sleep_s)
            continue
        yield pixels
