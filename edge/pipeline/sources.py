"""Frame sources behind one interface: OpenCV cameras and streams, image-folder replay, synthetic
parts (GigE Vision cameras: edge/pipeline/gige.py).

`next_frame(after_ns, timeout_s)` gives the first frame taken at or after `after_ns` (monotonic
ns), stamped when it left the camera, waiting at most `timeout_s`; `health` says whether the camera
streams. A live camera or stream is read by a thread of its own that always holds the newest frames
(edge/pipeline/camera_state.py), so nothing waits in a buffer to be inspected late; a camera that
fails is reopened there with backoff. Replays and synthetic parts make each frame when asked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.camera_probe import is_stream, stream_problem
from edge.errors import ImageError, UsageError
from edge.imageio import IMAGE_SUFFIXES, read_image
from edge.pipeline.camera_state import CameraHealth, Frame, RecentFrames
from edge.synthetic_parts import DEFECT_TYPES, draw_defect, make_part

log = logging.getLogger("edge.capture")
STREAM_TIMEOUT_MS = 5000  # a network stream that opens or delivers nothing this long is reopened
CATCH_UP_WAIT_S = 0.01  # a just-opened camera's read that waits this long (or a quarter period) is live
CATCH_UP_LIMIT_S = 5.0


class FrameSource(Protocol):
    """A camera or replay. A source that can trigger its camera also has `trigger()`, which capture
    calls for each triggered part before it waits for the part's frame."""

    exhausted: bool
    health: CameraHealth
    period_s: float | None  # the camera's frame period, where known

    def next_frame(self, after_ns: int, timeout_s: float) -> Frame | None: ...

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


def _made(source: SyntheticSource | FolderSource, pixels: np.ndarray | None) -> Frame | None:
    """A frame made when asked (replay, synthetic), taken now; the health follows."""
    if pixels is None:
        if source.exhausted:
            source.health.ended()
        return None
    source.health.streaming()
    source.health.frame_size(pixels.shape[1], pixels.shape[0])
    return Frame.now(pixels)


class SyntheticSource:
    """Endless (or `count`) synthetic parts; a `defect_rate` share carries a defect."""

    def __init__(
        self,
        size: int = 256,
        defect_rate: float = 0.2,
        count: int | None = None,
        seed: int = 0,
        rate_hz: float = 0.0,
        camera: str = "synthetic",
    ) -> None:
        self.pacer = Pacer(rate_hz)
        self.rng = np.random.default_rng(seed)
        self.size, self.defect_rate, self.remaining = size, defect_rate, count
        self.exhausted = False
        self.health = CameraHealth(camera)
        self.health.streaming()  # frames are made when asked
        self.period_s = 1 / rate_hz if rate_hz > 0 else None
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

    def next_frame(self, after_ns: int, timeout_s: float) -> Frame | None:
        return _made(self, self.read())

    def close(self) -> None:
        pass


class FolderSource:
    """Replays a folder's images in name order, at `rate_hz` (0: as fast as read), optionally looping."""

    def __init__(
        self, folder: str | Path, rate_hz: float = 0.0, loop: bool = False, camera: str = "folder"
    ) -> None:
        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise UsageError(f"{folder} holds no images to replay")
        self.pacer = Pacer(rate_hz)
        self.unreadable = 0
        self.loop = loop
        self.position = 0
        self.exhausted = False
        self.health = CameraHealth(camera)
        self.health.streaming()  # frames are made when asked
        self.period_s = 1 / rate_hz if rate_hz > 0 else None

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
            log.error("camera %s: skipping %s: %s", self.health.camera, path, exc)
            return None

    def next_frame(self, after_ns: int, timeout_s: float) -> Frame | None:
        return _made(self, self.read())

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class OpenCVSettings:
    """What the station asks of an OpenCV camera or stream (None: the device's or stream's own)."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None  # a USB camera's pixel encoding, e.g. "MJPG" (more frames/s over USB 2)
    rtsp_transport: str | None = None  # "tcp" (no lost packets) or "udp" (FFmpeg's default)


class OpenCVSource:
    """A USB/V4L2 camera (index or /dev path), a stream URL (RTSP, HTTP), a GStreamer pipeline
    where OpenCV has GStreamer, or a video file. Cameras and streams are read continuously by a
    thread that keeps the newest frames, each stamped as it left the stream; a failed read closes
    the camera and the thread reopens it with backoff. A video file is read frame by frame."""

    def __init__(
        self,
        uri: str | int,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        camera: str = "camera",
        settings: OpenCVSettings | None = None,
    ) -> None:
        self.uri = int(uri) if isinstance(uri, str) and uri.isdigit() else uri
        self.settings = settings or OpenCVSettings()
        self.backoff_min, self.backoff_max = backoff_s
        self.health = CameraHealth(camera)
        self.exhausted = False
        self.period_s: float | None = 1 / self.settings.fps if self.settings.fps else None
        self.live = not (isinstance(self.uri, str) and Path(self.uri).is_file())
        self.recent = RecentFrames()
        self.closing = threading.Event()
        self.capture: cv2.VideoCapture | None = None
        if self.settings.rtsp_transport and is_stream(self.uri):  # FFmpeg reads it when opening
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.settings.rtsp_transport}"
        self.reader: threading.Thread | None = None
        if self.live:
            self.reader = threading.Thread(target=self._read_on, name=f"camera-{camera}", daemon=True)
            self.reader.start()
        else:
            self.capture = self._open()

    def _open(self) -> cv2.VideoCapture | None:
        if is_stream(self.uri):  # a network stream: bounded waits
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        STREAM_TIMEOUT_MS]  # fmt: skip
            capture = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, timeouts)
        else:
            capture = cv2.VideoCapture(self.uri)
        if not capture.isOpened():
            capture.release()
            self.health.lost(f"did not open: {stream_problem(self.uri) or 'no reason given by OpenCV'}")
            return None
        wanted = self.settings
        if wanted.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*wanted.fourcc))
        asked = {cv2.CAP_PROP_FRAME_WIDTH: wanted.width, cv2.CAP_PROP_FRAME_HEIGHT: wanted.height,
                 cv2.CAP_PROP_FPS: wanted.fps}  # fmt: skip
        for prop, value in asked.items():
            if value is not None:
                capture.set(prop, value)
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not wanted.fps and 0 < fps < 1000:
            self.period_s = 1 / fps
        return capture

    def _read_on(self) -> None:
        """The reader thread: open, read every frame as it comes, reopen with backoff."""
        backoff = self.backoff_min
        while not self.closing.is_set():
            self.health.attempt()
            self.capture = self._open()
            if self.capture is not None:
                self._catch_up(self.capture)
            while self.capture is not None and not self.closing.is_set():
                frame = self._take(self.capture)
                if frame is None:
                    self.capture.release()
                    self.capture = None
                    self.health.lost("delivered no frame")
                    self.recent.wake()
                    break
                backoff = self.backoff_min
                self.recent.put(frame)
            if self.closing.wait(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max)

    def _catch_up(self, capture: cv2.VideoCapture) -> None:
        """Pass over what a just-opened stream or device had buffered (FFmpeg reads about 2 s of an
        RTSP stream while it opens it; V4L2 drivers hold a few frames): such frames come back to
        back, a live one only after a wait. Only frames after the first wait are used."""
        live_wait_s = min(0.25 * self.period_s, CATCH_UP_WAIT_S) if self.period_s else CATCH_UP_WAIT_S
        give_up = time.monotonic() + CATCH_UP_LIMIT_S
        passed_over = 0
        while time.monotonic() < give_up and not self.closing.is_set():
            started = time.monotonic()
            if not capture.grab() or time.monotonic() - started >= live_wait_s:
                break  # a live frame (or none: the next read finds out), taken from the next one on
            passed_over += 1
        if passed_over:
            log.info(
                "camera %s: %d frames buffered before opening passed over", self.health.camera, passed_over
            )

    def _take(self, capture: cv2.VideoCapture) -> Frame | None:
        if not capture.grab():
            return None
        taken_ns, taken_utc = time.monotonic_ns(), datetime.now(UTC)  # the moment it left the stream
        ok, pixels = capture.retrieve()
        if not ok or pixels is None:
            return None
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if pixels.ndim == 3 else pixels
        self.health.streaming()
        self.health.frame_size(pixels.shape[1], pixels.shape[0])
        return Frame(pixels, taken_ns, taken_utc)

    def next_frame(self, after_ns: int, timeout_s: float) -> Frame | None:
        if self.live:
            return self.recent.first_after(after_ns, timeout_s)
        if self.capture is None:
            return None
        frame = self._take(self.capture)
        if frame is None:
            self.exhausted = True
            self.health.ended()
        return frame

    def close(self) -> None:
        self.closing.set()
        if self.reader is not None:
            self.reader.join(STREAM_TIMEOUT_MS / 1000 + 1)
        if self.capture is not None:
            self.capture.release()


def frames(source: FrameSource, timeout_s: float = 0.1) -> Iterator[np.ndarray]:
    """Iterate a source's pixels until it is exhausted (forever for cameras)."""
    after = 0
    while not source.exhausted:
        frame = source.next_frame(after, timeout_s)
        if frame is not None:
            after = frame.taken_ns + 1
            yield frame.pixels
