"""Capture: frames from a source, stamped and sent to the worker (PUSH), and the camera's state
reported to the publisher.

free_run: the line does not wait for us. When the worker is behind, only the newest frame waits
to be sent (besides the one the socket's one-slot queue may hold); each frame replaced unsent is
counted as dropped. triggered: every frame is a part, taken when a trigger message names it
(a PLC bridge or the MES sends them to `trigger_endpoint`). A thread takes each trigger as it
arrives and stamps its arrival; the part's frame is the first one the camera took after that, and
if the camera is away, or gives no such frame within the trigger timeout (counted from the
arrival), the part is answered ERROR at once, with the reason. So no part is judged on a frame
taken before it reached the camera, and no trigger waits for a camera to come back. A part with a
frame is never dropped: its frame waits for the worker, and it is announced to the publisher,
which answers TIMEOUT if no verdict comes by its deadline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import zmq

from edge.imageio import to_uint8
from edge.pipeline.camera_state import STREAMING, Frame
from edge.pipeline.sources import FrameSource
from edge.protocol import (
    CameraState,
    FrameHeader,
    ProtocolError,
    Trigger,
    Verdict,
    VerdictMessage,
    decode_trigger,
    encode_camera_report,
    encode_expect,
    encode_frame,
    encode_result,
)
from edge.security import CurveClient
from edge.sockets import LOG_EVERY, REQUEST_BYTES, ErrorTally, open_socket

log = logging.getLogger("edge.capture")
FLUSH_ON_STOP_S = 2.0  # free run: how long the last frame may wait for the worker at shutdown
WAIT_S = 0.1  # the capture loop looks at its camera's state and the stop this often
REPORT_EVERY_S = 1.0  # the camera's state goes to the publisher this often, and on every change
DEFAULT_TRIGGER_TIMEOUT_S = 1.0  # a camera whose frame period is unknown
MIN_TRIGGER_TIMEOUT_S = 0.5
TO_PUBLISHER_HWM = 100_000  # announcements and reports waiting for a publisher that is not up


@dataclass(frozen=True)
class CaptureSettings:
    station: str
    camera: str
    frames_endpoint: str  # the worker's bound PULL
    trigger: str = "free_run"
    deadline_ms: float | None = None
    stale_after_s: float = 5.0
    results_endpoint: str | None = None  # the publisher's PULL: triggered parts announced, camera state
    trigger_endpoint: str | None = None  # triggered: bound PULL for trigger messages
    curve: CurveClient | None = None  # when the worker is on another host
    # triggered: longest wait from a trigger's arrival to its frame; None: 4 frame periods (≥ 0.5 s)
    trigger_timeout_ms: float | None = None


@dataclass
class CaptureCounters:
    sent: int = 0
    dropped: int = 0
    stale: int = 0
    failed: Counter = field(default_factory=Counter)  # triggered parts answered ERROR here, by reason
    unannounced: int = 0  # triggered parts the publisher could not be told of (its queue full)
    malformed_triggers: ErrorTally = field(default_factory=lambda: ErrorTally("trigger", log))


class TriggerInbox:
    """Takes trigger messages as they arrive and stamps each with its arrival, whatever the capture
    loop is doing (waiting for a frame, or for the worker): a part's deadline and its frame count
    from the moment its trigger came."""

    def __init__(self, socket: zmq.Socket, malformed: ErrorTally) -> None:
        self.socket = socket
        self.malformed = malformed
        self.arrived: queue.SimpleQueue[tuple[Trigger, int]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="triggers", daemon=True)
        self.thread.start()

    def _take(self) -> None:
        parts = self.socket.recv_multipart()
        arrived = time.monotonic_ns()
        try:
            self.arrived.put((decode_trigger(parts), arrived))
        except ProtocolError as error:
            self.malformed.count(error)

    def _run(self) -> None:
        while not self.stopping.is_set():
            if self.socket.poll(int(WAIT_S * 1000)):
                self._take()
        while self.socket.poll(0):  # parts already triggered when the stop came are still answered
            self._take()

    def get(self, timeout_s: float) -> tuple[Trigger, int] | None:
        try:
            return self.arrived.get(timeout=timeout_s) if timeout_s > 0 else self.arrived.get_nowait()
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


class Capture:
    def __init__(self, source: FrameSource, settings: CaptureSettings, context: zmq.Context | None = None):
        context = context or zmq.Context.instance()
        self.source = source
        self.settings = settings
        self.counters = CaptureCounters()
        self.seq = 0
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.pending: list | None = None  # free run: the newest frame, not yet sent
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
        self.to_publisher = None
        if settings.results_endpoint:
            self.to_publisher = open_socket(
                context,
                zmq.PUSH,
                settings.results_endpoint,
                bind=False,
                max_message_bytes=None,
                linger_ms=5000,
                send_hwm=TO_PUBLISHER_HWM,
            )
        self.triggers = None
        if settings.trigger == "triggered" and settings.trigger_endpoint:
            self.triggers = open_socket(
                context, zmq.PULL, settings.trigger_endpoint, bind=True, max_message_bytes=REQUEST_BYTES
            )
        self.last_frame = time.monotonic()
        self.reported: tuple[CameraState, float] | None = None  # the latest report, when it was sent
        self.next_look = 0.0  # when report() next looks at the camera's state

    def frame_id(self, seq: int) -> str:
        return f"{self.settings.camera}-{self.run_id}-{seq}"

    def stamp(
        self, frame: Frame, part_id: str | None = None, product: str | None = None
    ) -> tuple[FrameHeader, list]:
        pixels = to_uint8(frame.pixels)
        header = FrameHeader(
            station=self.settings.station,
            camera=self.settings.camera,
            seq=self.seq,
            frame_id=self.frame_id(self.seq),
            capture_utc=frame.taken_utc.isoformat(),
            capture_monotonic_ns=frame.taken_ns,
            height=pixels.shape[0],
            width=pixels.shape[1],
            channels=1 if pixels.ndim == 2 else 3,
            trigger=self.settings.trigger,
            part_id=part_id,
            deadline_ms=self.settings.deadline_ms,
            product=product,
        )
        self.seq += 1
        return header, encode_frame(header, pixels)

    # ---- to the publisher ----------------------------------------------------------------------
    def _tell_publisher(self, message: list[bytes]) -> bool:
        """False when the publisher's queue is full (it has been away long): never blocks the line."""
        if self.to_publisher is None:
            return False
        try:
            self.to_publisher.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def camera_state(self) -> CameraState:
        health = self.source.health.snapshot()
        return CameraState(
            state=health.reported(self.settings.stale_after_s),
            since_utc=health.since_utc.isoformat(),
            reason=health.reason[:2048] if health.reason else None,
            width=health.width,
            height=health.height,
            reconnects=health.reconnects,
            failed_parts=sum(self.counters.failed.values()),
        )

    def report(self, force: bool = False) -> None:
        """The camera's state to the publisher (for heartbeats): on a change (looked at every
        WAIT_S, not per frame), and every second."""
        now = time.monotonic()
        if not force and now < self.next_look:
            return
        self.next_look = now + WAIT_S
        state = self.camera_state()
        if self.reported is not None and not force:
            last, sent_at = self.reported
            unchanged = asdict(last) | {"failed_parts": 0} == asdict(state) | {"failed_parts": 0}
            if unchanged and time.monotonic() - sent_at < REPORT_EVERY_S:
                return
        self._tell_publisher(encode_camera_report(self.settings.station, self.settings.camera, state))
        self.reported = (state, time.monotonic())

    # ---- frames to the worker ------------------------------------------------------------------
    def _flush(self) -> None:
        if self.pending is None:
            return
        try:
            self.socket.send_multipart(self.pending, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        self.pending = None
        self.counters.sent += 1

    def offer(self, frame: Frame, part_id: str | None = None, product: str | None = None) -> None:
        """Send one frame by the trigger mode's rule."""
        header, message = self.stamp(frame, part_id, product)
        self.last_frame = time.monotonic()
        if self.settings.trigger == "triggered":
            if not self._tell_publisher(encode_expect(header)) and self.to_publisher is not None:
                self.counters.unannounced += 1
                if self.counters.unannounced % LOG_EVERY == 1:
                    log.error("camera %s: part %s not announced: the publisher's queue is full (%d so far)",
                              self.settings.camera, part_id, self.counters.unannounced)  # fmt: skip
            self.socket.send_multipart(message, copy=False)  # blocks while the worker is behind
            self.counters.sent += 1
            return
        if self.pending is not None:
            self._flush()
        if self.pending is not None:
            self.counters.dropped += 1  # keep newest: the older unsent frame is replaced
        self.pending = message
        self._flush()

    def fail(self, part_id: str, kind: str, reason: str, product: str | None = None) -> None:
        """A triggered part that cannot be inspected: its ERROR verdict goes straight to the publisher."""
        self.counters.failed[kind] += 1
        log.error("camera %s: part %s not inspected: %s", self.settings.camera, part_id, reason)
        now_ns, now = time.monotonic_ns(), datetime.now(UTC)
        verdict = VerdictMessage(
            station=self.settings.station,
            camera=self.settings.camera,
            frame_id=self.frame_id(self.seq),
            part_id=part_id,
            verdict=Verdict.ERROR,
            capture_utc=now.isoformat(),
            capture_monotonic_ns=now_ns,
            error=reason[:2048],
            recipe=product,
            reason="camera",
        )
        self.seq += 1
        self._tell_publisher(encode_result(verdict, None))

    def _check_stale(self) -> None:
        """Free run: a camera said to stream that gave no frame for stale_after_s is lost (one
        already away keeps its own reason, and the time it went away)."""
        if self.source.health.snapshot().state != STREAMING:
            self.last_frame = time.monotonic()
            return
        if time.monotonic() - self.last_frame > self.settings.stale_after_s:
            self.counters.stale += 1
            self.source.health.lost(f"no frame for {self.settings.stale_after_s:.1f} s")
            self.last_frame = time.monotonic()

    # ---- triggered -----------------------------------------------------------------------------
    def trigger_timeout_s(self) -> float:
        """From a trigger's arrival to its frame: the setting, else 4 frame periods (at least 0.5 s)."""
        if self.settings.trigger_timeout_ms is not None:
            return self.settings.trigger_timeout_ms / 1000
        period = self.source.period_s
        return max(MIN_TRIGGER_TIMEOUT_S, 4 * period) if period else DEFAULT_TRIGGER_TIMEOUT_S

    def serve(self, trigger: Trigger, arrived_ns: int) -> bool:
        """One triggered part: the first frame taken after its trigger arrived, or ERROR at once."""
        part_id, product = trigger.part_id, trigger.product
        timeout_s = self.trigger_timeout_s()
        health = self.source.health.snapshot()
        if health.state != STREAMING:
            state = health.reported(self.settings.stale_after_s)
            self.fail(part_id, "camera_away", f"camera {state}: {health.reason}", product)
            return False
        waited_s = (time.monotonic_ns() - arrived_ns) / 1e9
        if waited_s >= timeout_s:  # capture was held up (a worker far behind): its moment has passed
            self.fail(part_id, "trigger_late", f"the trigger waited {waited_s * 1000:.0f} ms for capture "
                      f"(trigger timeout {timeout_s * 1000:.0f} ms)", product)  # fmt: skip
            return False
        fire = getattr(self.source, "trigger", None)  # a camera with a trigger of its own
        if fire is not None:
            fire()
        frame = self.source.next_frame(arrived_ns, timeout_s - waited_s)
        if frame is None:
            now = self.source.health.snapshot()
            why = f" (camera {now.state}: {now.reason})" if now.state != STREAMING else ""
            self.fail(
                part_id, "no_frame", f"no frame within {timeout_s * 1000:.0f} ms of the trigger{why}", product
            )
            return False
        self.offer(frame, part_id, product)
        return True

    def _serve_triggers(self, stop: threading.Event, progress: Callable[[], None]) -> None:
        assert self.triggers is not None
        inbox = TriggerInbox(self.triggers, self.counters.malformed_triggers)
        try:
            while not stop.is_set():
                self.report()
                progress()
                arrived = inbox.get(WAIT_S)
                if arrived is not None:
                    self.serve(*arrived)
        finally:
            inbox.stop()  # it takes the triggers that had arrived
        while (arrived := inbox.get(0)) is not None:
            self.serve(*arrived)
        self.report(force=True)

    # ---- free run ------------------------------------------------------------------------------
    def _stream(self, stop: threading.Event, progress: Callable[[], None]) -> None:
        after_ns = 0
        while not stop.is_set() and not self.source.exhausted:
            self.report()
            progress()
            frame = self.source.next_frame(after_ns, WAIT_S)
            if frame is None:
                self._flush()
                self._check_stale()
                continue
            after_ns = frame.taken_ns + 1
            self.offer(frame)
        self.report(force=True)

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> CaptureCounters:
        """Until `stop` (or a finite source's end): stream (free run) or serve triggers (triggered).
        `progress` is called every WAIT_S at least: a camera away is reported as its state, not by
        a process that stops feeding its watchdog."""
        if self.triggers is not None:
            self._serve_triggers(stop, progress)
        else:
            self._stream(stop, progress)
        give_up = time.monotonic() + FLUSH_ON_STOP_S
        while self.pending is not None and time.monotonic() < give_up:
            self._flush()
            time.sleep(0.002)
        if self.pending is not None:
            self.counters.dropped += 1
            self.pending = None
        return self.counters

    def close(self) -> None:
        self.source.close()
        for socket in (self.socket, self.to_publisher, self.triggers):
            if socket is not None:
                socket.close()
