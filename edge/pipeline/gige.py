"""A GigE Vision (or USB3 Vision) camera through Aravis: free run, or triggered by the camera's own
software trigger; settings applied at every (re)open; incomplete buffers counted, never inspected.

Aravis comes from the system (Debian: gir1.2-aravis-0.8) and PyGObject from the `gige` extra (or
the system's python3-gi with a venv made with --system-site-packages). Tested against Aravis's own
GigE Vision camera simulator, `arv-fake-gv-camera-0.8` (real GVCP/GVSP over UDP on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.errors import UsageError
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
    region: tuple[int, int, int, int] | None = None  # x, y, width, height on the sensor
    packet_size: int | None = None  # GVSP packet bytes; None: the largest that reaches this host
    packet_resend: bool = True  # ask the camera again for lost packets
    packet_timeout_ms: float = 40.0  # wait this long for a missing packet before asking again
    frame_retention_ms: float = 200.0  # give up on an incomplete frame after this long
    socket_buffer_bytes: int | None = None  # None: Aravis sizes it to one frame
    buffers: int = 8
    timeout_s: float = 1.0  # one read's wait for a frame
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
    """`read()` gives the next complete frame (Mono8/Mono16 as is, RGB8, Bayer demosaiced to RGB)
    or None. A camera whose control connection is lost, or that sends nothing for a while in free
    run, is reopened every RETRY_S; `reopens` and `incomplete` (buffers by status) count it."""

    def __init__(self, settings: GigESettings) -> None:
        self.aravis = _aravis()
        self.settings = settings
        self.exhausted = False
        self.reopens = 0
        self.incomplete: Counter[str] = Counter()  # buffers not inspected, by Aravis status
        self.stale_discarded = 0  # triggered: frames that came after their part had given up
        self.complete = 0  # frames decoded and handed on
        self.camera: Any = None  # Aravis.Camera, Aravis.Stream (GObject introspection: untyped)
        self.stream: Any = None
        self.pixel_format = ""
        self.lost = threading.Event()  # set by Aravis's heartbeat thread
        self.retry_at = 0.0
        self.last_frame = time.monotonic()
        self._open()

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
            log.warning("GigE camera %s did not open (%s); retrying", settings.camera_id or "(first)", exc)
            self.retry_at = time.monotonic() + RETRY_S
            return
        self.camera, self.stream = camera, stream
        self.pixel_format = camera.get_pixel_format_as_string()
        self.lost.clear()
        self.last_frame = time.monotonic()
        x, y, width, height = camera.get_region()
        log.info("GigE camera %s (%s %s): %dx%d at (%d, %d), %s, %s", camera.get_device_id(),
                 camera.get_vendor_name(), camera.get_model_name(), width, height, x, y, self.pixel_format,
                 "software trigger" if settings.triggered else "free run")  # fmt: skip

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
        log.error(
            "GigE camera %s: %s; reopening every %.0f s", self.settings.camera_id or "(first)", why, RETRY_S
        )
        with contextlib.suppress(Exception):  # the camera is gone: there is nothing to stop
            self.camera.stop_acquisition()
        self.camera = self.stream = None
        self.retry_at = time.monotonic() + RETRY_S

    def _usable(self) -> bool:
        """A camera to read from, reopening a lost one when its retry is due."""
        if self.camera is not None:
            lost_for = time.monotonic() - self.last_frame
            if self.lost.is_set():
                self._drop_camera("control connection lost")
            elif not self.settings.triggered and lost_for > max(3.0, 3 * self.settings.timeout_s):
                self._drop_camera(f"no frame for {lost_for:.1f} s")
        if self.camera is None and time.monotonic() >= self.retry_at:
            self.reopens += 1
            self._open()
        return self.camera is not None

    # ---- frames --------------------------------------------------------------------------------
    def trigger(self) -> None:
        """Triggered mode: fire the camera's software trigger for the next part, after setting aside
        frames still queued (they belong to parts that already gave up waiting)."""
        if not self._usable():
            return
        while (old := self.stream.try_pop_buffer()) is not None:
            self.stale_discarded += 1
            self.stream.push_buffer(old)
        try:
            self.camera.software_trigger()
        except Exception as exc:
            self._drop_camera(f"trigger failed ({exc})")

    def read(self) -> np.ndarray | None:
        if not self._usable():
            return None
        buffer = self.stream.timeout_pop_buffer(int(self.settings.timeout_s * 1e6))
        if buffer is None:
            return None
        try:
            status = buffer.get_status()
            if status != self.aravis.BufferStatus.SUCCESS:
                self.incomplete[status.value_nick] += 1
                if sum(self.incomplete.values()) % 100 == 1:
                    log.warning("GigE camera: buffer %s, not inspected (%s so far)", status.value_nick,
                                dict(self.incomplete))  # fmt: skip
                return None
            self.last_frame = time.monotonic()
            frame = self._decode(buffer)
            self.complete += frame is not None
            return frame
        finally:
            self.stream.push_buffer(buffer)

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
        self.incomplete[f"format {fmt}"] += 1
        if self.incomplete[f"format {fmt}"] == 1:
            log.error("GigE camera sends %s; set pixel_format to one of %s", fmt, ", ".join(PIXEL_FORMATS))
        return None

    def close(self) -> None:
        log.info("GigE camera %s: %d frames, incomplete buffers %s, %d stale frames set aside, %d reopens",
                 self.settings.camera_id or "(first)", self.complete, dict(self.incomplete),
                 self.stale_discarded, self.reopens)  # fmt: skip
        if self.camera is not None:
            with contextlib.suppress(Exception):  # a camera already gone
                self.camera.stop_acquisition()
        self.camera = self.stream = None
