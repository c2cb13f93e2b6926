"""A GigE Vision (or USB3 Vision) camera through Aravis: free run, or triggered by the camera's own
software trigger; settings applied at every (re)open; incomplete buffers counted, never inspected.
A thread of its own opens the camera, takes every buffer as it arrives (stamped with the time
Aravis received it) and reopens a lost camera, so the capture loop never waits on the camera.

Aravis comes from the system (Debian: gir1.2-aravis-0.8) and PyGObject from the `gige` extra (or
the system's python3-gi with a venv made with --system-site-packages). Tested against Aravis's own
GigE Vision camera simulator, `arv-fake-gv-camera-0.8` (real GVCP/GVSP over UDP on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.errors import UsageError
from edge.pipeline.camera_state import CameraHealth, Frame, RecentFrames
from edge.pixel_formats import BAYER_FORMATS, PIXEL_FORMATS

log = logging.getLogger("edge.capture")
RETRY_S = 2.0  # between attempts to reopen a lost camera
# OpenCV names a Bayer pattern by the second row's first two pixels, GenICam by the first row's
BAYER_TO_RGB = dict(
    zip(
        BAYER_FORMATS,
        (cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerGB2RGB, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerGR2RGB),
        strict=True,
    )
)


@dataclass(frozen=True)
class GigESettings:
    """What the station sets on the camera and its stream (None: the camera's own value)."""

    camera_id: str | None = None  # Aravis device id ("Basler-21234567") or the camera's IP address
    pixel_format: str | None = None  # one of PIXEL_FORMATS
    exposure_us: float | None = None
    gain_db: float | None = None
    frame_rate: float | None = None  # free run: frames per second (AcquisitionFrameRate)
    region: tuple[int, int, int, int] | None = None  # x, y, width, height on the sensor
    packet_size: int | None = None  # GVSP packet bytes; None: the largest that reaches this host
    packet_resend: bool = True  # ask the camera again for lost packets
    packet_timeout_ms: float = 40.0  # wait this long for a missing packet before asking again
    frame_retention_ms: float = 200.0  # give up on an incomplete frame after this long
    socket_buffer_bytes: int | None = None  # None: Aravis sizes it to one frame
    buffers: int = 8
    timeout_s: float = 1.0  # free run: no frame for 3 times this long (at least 3 s): the camera is reopened
    triggered: bool = False  # TriggerMode=On, TriggerSource=Software; `trigger()` fires it


def _aravis():
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError):
        raise UsageError(
            "GigE Vision cameras need Aravis: the system package gir1.2-aravis-0.8 and PyGObject "
            "(pip install 'edge[gige]', with libgirepository1.0-dev and libcairo2-dev to build it; "
            "deploy/install.sh --aravis)"
        ) from None
    return Aravis


class AravisSource:
    """`next_frame()` gives complete frames (Mono8/Mono16 as is, RGB8, Bayer demosaiced to RGB). A
    camera whose control connection is lost, or that sends nothing for a while in free run, is
    reopened every RETRY_S; `health` and `incomplete` (buffers by status) say so."""

    def __init__(self, settings: GigESettings, camera: str = "camera") -> None:
        self.aravis = _aravis()
        self.settings = settings
        self.exhausted = False
        self.health = CameraHealth(camera)
        self.period_s: float | None = 1 / settings.frame_rate if settings.frame_rate else None
        self.complete = 0  # frames decoded and handed on
        self.camera: Any = None  # Aravis.Camera, Aravis.Stream (GObject introspection: untyped)
        self.stream: Any = None
        self.pixel_format = ""
        self.lost = threading.Event()  # set by Aravis's heartbeat thread, or by a failed trigger
        self.last_frame = time.monotonic()
        self.recent = RecentFrames()
        self.closing = threading.Event()
        self.reader = threading.Thread(target=self._read_on, name=f"camera-{camera}", daemon=True)
        self.reader.start()

    @property
    def name(self) -> str:
        return self.health.camera

    # ---- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        settings = self.settings
        try:
            camera = self.aravis.Camera.new(settings.camera_id)
            self._configure(camera)
            stream = camera.create_stream(None, None)
            if camera.is_gv_device():
                self._configure_stream(stream)
            payload = camera.get_payload()
            for _ in range(settings.buffers):
                stream.push_buffer(self.aravis.Buffer.new_allocate(payload))
            camera.get_device().connect("control-lost", lambda _device: self.lost.set())
            camera.start_acquisition()
        except Exception as exc:  # GLib errors: camera absent, busy, unreachable, setting refused
            where = settings.camera_id or "(the first found)"
            self.health.lost(f"GigE camera {where} did not open ({str(exc).strip() or type(exc).__name__})")
            return
        self.pixel_format = camera.get_pixel_format_as_string()
        self.lost.clear()
        self.last_frame = time.monotonic()
        with contextlib.suppress(Exception):  # a camera without AcquisitionFrameRate
            rate = camera.get_frame_rate()
            self.period_s = 1 / rate if rate > 0 and not settings.triggered else self.period_s
        x, y, width, height = camera.get_region()
        mode = "software trigger" if settings.triggered else "free run"
        log.info("camera %s: GigE camera %s (%s %s): %dx%d at (%d, %d), %s, %s", self.name,
                 camera.get_device_id(), camera.get_vendor_name(), camera.get_model_name(), width, height,
                 x, y, self.pixel_format, mode)  # fmt: skip
        self.camera, self.stream = camera, stream
        self.health.streaming()
        self.health.frame_size(width, height)

    def _configure(self, camera) -> None:  # an Aravis.Camera
        settings = self.settings
        if settings.pixel_format is not None:
            camera.set_pixel_format_from_string(settings.pixel_format)
        if settings.region is not None:
            camera.set_region(*settings.region)
        if settings.exposure_us is not None:
            camera.set_exposure_time(settings.exposure_us)
        if settings.gain_db is not None:
            camera.set_gain(settings.gain_db)
        if settings.frame_rate is not None and not settings.triggered:
            camera.set_frame_rate(settings.frame_rate)
        if settings.triggered:
            camera.set_trigger("Software")
        else:
            camera.clear_triggers()
            camera.set_acquisition_mode(self.aravis.AcquisitionMode.CONTINUOUS)
        if camera.is_gv_device():
            if settings.packet_size is not None:
                camera.gv_set_packet_size(settings.packet_size)
            else:
                camera.gv_auto_packet_size()

    def _configure_stream(self, stream) -> None:  # an Aravis.GvStream
        settings, aravis = self.settings, self.aravis
        resend = (
            aravis.GvStreamPacketResend.ALWAYS
            if settings.packet_resend
            else aravis.GvStreamPacketResend.NEVER
        )
        stream.set_property("packet-resend", resend)
        stream.set_property("packet-timeout", int(settings.packet_timeout_ms * 1000))
        stream.set_property("frame-retention", int(settings.frame_retention_ms * 1000))
        if settings.socket_buffer_bytes is not None:
            stream.set_property("socket-buffer", aravis.GvStreamSocketBuffer.FIXED)
            stream.set_property("socket-buffer-size", settings.socket_buffer_bytes)

    def _drop_camera(self, why: str) -> None:
        self.health.lost(f"{why}; reopening every {RETRY_S:.0f} s")
        with contextlib.suppress(Exception):  # the camera is gone: there is nothing to stop
            self.camera.stop_acquisition()
        self.camera = self.stream = None
        self.recent.wake()

    def _check_alive(self) -> None:
        lost_for = time.monotonic() - self.last_frame
        if self.lost.is_set():
            self._drop_camera("control connection lost")
        elif not self.settings.triggered and lost_for > max(3.0, 3 * self.settings.timeout_s):
            self._drop_camera(f"no frame for {lost_for:.1f} s")

    def _read_on(self) -> None:
        """The reader thread: open, take every buffer, reopen a lost camera every RETRY_S."""
        while not self.closing.is_set():
            if self.camera is None:
                self.health.attempt()
                self._open()
                if self.camera is None and self.closing.wait(RETRY_S):
                    break
                continue
            self._check_alive()
            if self.stream is not None:
                frame = self._pop(self.stream)
                if frame is not None:
                    self.recent.put(frame)
        if self.camera is not None:
            with contextlib.suppress(Exception):  # a camera already gone
                self.camera.stop_acquisition()
        self.camera = self.stream = None

    # ---- frames --------------------------------------------------------------------------------
    def trigger(self) -> None:
        """Triggered mode: fire the camera's software trigger for the next part (its frame is the
        first one taken after the trigger came; frames already on their way are passed over)."""
        camera = self.camera
        if camera is None:
            return
        try:
            camera.software_trigger()
        except Exception as exc:
            self.health.lost(f"trigger failed ({exc})")
            self.lost.set()

    def next_frame(self, after_ns: int, timeout_s: float) -> Frame | None:
        return self.recent.first_after(after_ns, timeout_s)

    def _pop(self, stream) -> Frame | None:  # an Aravis.Stream
        buffer = stream.timeout_pop_buffer(100_000)  # µs: the thread looks at the camera's state often
        if buffer is None:
            return None
        try:
            status = buffer.get_status()
            if status != self.aravis.BufferStatus.SUCCESS:
                self.health.incomplete[status.value_nick] += 1
                if sum(self.health.incomplete.values()) % 100 == 1:
                    log.warning("camera %s: buffer %s, not inspected (%s so far)", self.name,
                                status.value_nick, dict(self.health.incomplete))  # fmt: skip
                return None
            self.last_frame = time.monotonic()
            pixels = self._decode(buffer)
            if pixels is None:
                return None
            self.complete += 1
            self.health.frame_size(pixels.shape[1], pixels.shape[0])
            received_ns, number = buffer.get_system_timestamp(), buffer.get_frame_id()
            if not received_ns:
                return Frame.now(pixels, number)
            return Frame.at_wall_clock(pixels, received_ns, number)
        finally:
            stream.push_buffer(buffer)

    def _decode(self, buffer) -> np.ndarray | None:  # an Aravis.Buffer
        height, width = buffer.get_image_height(), buffer.get_image_width()
        data = np.frombuffer(buffer.get_data(), np.uint8)
        fmt = self.pixel_format
        if fmt == "Mono8":
            return data[: height * width].reshape(height, width).copy()
        if fmt == "Mono16":
            return data[: height * width * 2].view("<u2").reshape(height, width).copy()
        if fmt == "RGB8":
            return data[: height * width * 3].reshape(height, width, 3).copy()
        if fmt in BAYER_TO_RGB:
            return cv2.cvtColor(data[: height * width].reshape(height, width), BAYER_TO_RGB[fmt])
        self.health.incomplete[f"format {fmt}"] += 1
        if self.health.incomplete[f"format {fmt}"] == 1:
            log.error(
                "camera %s sends %s; set pixel_format to one of %s", self.name, fmt, ", ".join(PIXEL_FORMATS)
            )
        return None

    def close(self) -> None:
        self.closing.set()
        self.reader.join(RETRY_S + 5)
        log.info("camera %s: %d frames, incomplete buffers %s, %d reconnects", self.name, self.complete,
                 dict(self.health.incomplete), self.health.reconnects)  # fmt: skip
