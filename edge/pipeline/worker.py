"""The worker: receives frames, micro-batches them, inspects them, and passes every result on
(PUSH to the publisher). Every frame that named itself gets exactly one verdict.

Alone, a worker binds the frames endpoint (PULL) and captures connect to it. In a pool, it connects
a DEALER to the broker (`edge/pipeline/broker.py`) and reports its credit (`ready`): it is sent
only what it can take.

Bank reload: on a control request (REP, `{"command": "reload"}`) or `request_reload()` (SIGHUP), the
new bank is loaded on a side thread while the old one keeps scoring, and swapped in between two
micro-batches: frames taken before the swap are scored by the old bank, frames after it by the new,
none twice, and each verdict names the bank version that scored it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from edge.errors import EdgeError
from edge.pipeline.inspection import Bank, RecipeBook, decode_or_error, inspect
from edge.pipeline.recorder import FrameRecorder
from edge.pipeline.selections import load_selections, save_selections
from edge.protocol import (
    BROKER_ORDERS,
    FRAME_TOPIC,
    MAX_PIXEL_BYTES,
    RELOAD_TOPIC,
    SELECT_TOPIC,
    BankReply,
    ErrorReply,
    ProtocolError,
    VerdictMessage,
    WorkerReady,
    decode_broker_order,
    decode_control,
    encode_ready,
    encode_reply,
    encode_result,
)
from edge.security import CurveClient, CurveServer, stop_authenticator
from edge.sockets import FRAME_BYTES, REQUEST_BYTES, ErrorTally, answer, open_socket

log = logging.getLogger("edge.worker")
POLL_MS = 100
# Frames waiting in the worker, in bytes: a micro-batch holds at most one largest frame's worth of
# pixels (or several smaller frames), the inbox at most QUEUE_BYTES (plus the frame that crossed
# it) and ZeroMQ's own queue two frames; with the model this keeps the worker's memory bounded
# whatever headers arrive (tests/station/test_hostile.py measures it), while small frames still queue
# two micro-batches deep, so the next batch is ready when the last one is scored.
BATCH_BYTES = MAX_PIXEL_BYTES
QUEUE_BYTES = 2 * MAX_PIXEL_BYTES  # with 4, one CI run peaked at 1509 MB under the largest frames
DRAIN_IDLE_S = 0.5  # at shutdown: answering ends once no frame came for this long
REPORT_S = 0.25  # a pool worker's report interval when nothing changes (the broker's heartbeat)
REPORT_POLL_MS = 1  # how soon a pool worker tells the broker of room freed by a micro-batch


class Inbox:
    """Frames received ahead of scoring, by a thread of their own that reads the socket while the
    model scores; what waits is bounded in frames and in bytes, and past that bound the frames
    wait in the sender's queue (ZeroMQ's backpressure). Only this thread touches the socket.

    With `pool` (a DEALER connected to a broker), the thread also reports the inbox's room
    (`ready`), at once when a micro-batch frees some and every REPORT_S, and hands the broker's
    `reload` and `refused` messages to `pool`."""

    def __init__(
        self, socket: zmq.Socket, max_frames: int, max_bytes: int, pool: PoolLink | None = None
    ) -> None:
        self.socket = socket
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.queue: deque[list[zmq.Frame]] = deque()
        self.bytes = 0
        self.received = self.received_bytes = 0
        self.pool = pool
        self.room_changed = True
        self.changed = threading.Condition()
        self.closing = threading.Event()
        target = self._receive if pool is None else self._receive_from_broker
        self.thread = threading.Thread(target=target, name="frames-in", daemon=True)
        self.thread.start()

    def _full(self) -> bool:
        return len(self.queue) >= self.max_frames or self.bytes >= self.max_bytes

    def _room(self) -> tuple[int, int]:
        """Frames and bytes this inbox can still take (a broker sends no frame that would not fit)."""
        return max(0, self.max_frames - len(self.queue)), max(0, self.max_bytes - self.bytes)

    def _receive(self) -> None:
        while not self.closing.is_set():
            with self.changed:
                while self._full() and not self.closing.is_set():
                    self.changed.wait(POLL_MS / 1000)
            if self.closing.is_set() or not self.socket.poll(POLL_MS):
                continue
            self._append(self.socket.recv_multipart(copy=False))

    def _append(self, parts: list[zmq.Frame]) -> None:
        with self.changed:
            self.queue.append(parts)
            self.bytes += _bytes(parts)
            self.received += 1
            self.received_bytes += _bytes(parts)
            self.changed.notify_all()

    def _receive_from_broker(self) -> None:
        assert self.pool is not None
        last_report = 0.0
        while not self.closing.is_set():
            now = time.monotonic()
            if self.room_changed or now - last_report >= REPORT_S:
                with self.changed:
                    self.room_changed = False
                    room, received = self._room(), (self.received, self.received_bytes)
                self.socket.send_multipart(self.pool.report(received, room))
                last_report = now
            if not self.socket.poll(REPORT_POLL_MS):
                continue
            parts = self.socket.recv_multipart(copy=False)
            if parts and parts[0].bytes == FRAME_TOPIC:
                self._append(parts)
            elif parts and parts[0].bytes in BROKER_ORDERS:
                self.pool.told([part.bytes for part in parts])

    def take(self, timeout_s: float, budget: int | None = None) -> list[zmq.Frame] | None:
        """The next frame within `timeout_s`, or None; with `budget`, only a frame of at most that
        many bytes (a larger one stays first in line)."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not self.queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)
            if budget is not None and _bytes(self.queue[0]) > budget:
                return None
            parts = self.queue.popleft()
            self.bytes -= _bytes(parts)
            self.room_changed = True
            self.changed.notify_all()
            return parts

    def close(self) -> None:
        self.closing.set()
        self.thread.join()


@dataclass(frozen=True)
class WorkerSettings:
    station: str
    frames_endpoint: str  # bound PULL: capture processes connect here (or the broker's, in a pool)
    results_endpoint: str  # connected PUSH: the publisher binds here
    max_batch: int = 8
    max_wait_ms: float = 5.0
    control_endpoint: str | None = None  # bound REP: reload requests
    curve: CurveServer | None = None  # on the frames PULL, when captures connect from other hosts
    pool_name: str | None = None  # set: a pool worker of this name, connected to the broker's ROUTER
    pool_curve: CurveClient | None = None  # to a broker on another host
    selections: Path | None = None  # where a lone worker keeps its recipe selections (a restart reads them)


class PoolLink:
    """What a pool worker tells its broker and does on the broker's word; called from the inbox's
    thread, so it only reads the worker's counters and sets its events."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker, self.name = worker, name
        self.refused: str | None = None

    def report(self, received: tuple[int, int], room: tuple[int, int]) -> list[bytes]:
        """`ready`: frames and bytes received so far, and room left in frames and bytes."""
        worker = self.worker
        return encode_ready(
            WorkerReady(
                worker=self.name,
                received=received[0],
                answered=worker.answered,
                capacity=room[0],
                received_bytes=received[1],
                capacity_bytes=room[1],
                bank_id=worker.bank.bank_id,
                bank_version=worker.bank.version,
                reloads=worker.reloads_finished,
                reload_error=worker.reload_error,
            )
        )

    def told(self, parts: list[bytes]) -> None:
        """The broker's `reload` or `refused` (a malformed one is logged, and does nothing)."""
        try:
            topic, order = decode_broker_order(parts)
        except ProtocolError as error:
            log.warning("a malformed order from the broker, ignored: %s", error)
            return
        if topic == RELOAD_TOPIC:
            log.info("the broker asks for a bank reload")
            self.worker.reload_requested.set()
        elif topic == SELECT_TOPIC:
            self.worker.ordered_selections.put(dict(order.selected or {}))  # taken between micro-batches
        elif order.error != self.refused:
            self.refused = order.error
            log.error("the broker gives this worker no frames: %s", order.error)


@dataclass
class WorkerCounters:
    frames_in: int = 0
    verdicts_out: int = 0
    reloads: int = 0
    # malformed frames and requests, and frames that could not be scored, by kind
    malformed: ErrorTally = field(default_factory=lambda: ErrorTally("frame or request", log))


class _Reload:
    """Recipes being loaded beside the scoring loop, and the control request waiting for its answer."""

    def __init__(self, load: Callable[[], RecipeBook | Bank]) -> None:
        self.result: RecipeBook | Bank | Exception | None = None
        self.thread = threading.Thread(target=self._load, args=(load,), name="bank-reload", daemon=True)
        self.thread.start()
        self.reply_owed = False

    def _load(self, load: Callable[[], RecipeBook | Bank]) -> None:
        try:
            self.result = load()
        except Exception as exc:  # reported to the requester; the old bank stays
            self.result = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


class Worker:
    def __init__(
        self,
        recipes: RecipeBook | Bank,
        settings: WorkerSettings,
        context: zmq.Context | None = None,
        load_bank: Callable[[], RecipeBook | Bank] | None = None,
        recorder: FrameRecorder | None = None,
    ) -> None:
        self.recipes = RecipeBook.of(recipes)
        self.recipes.selected = load_selections(settings.selections, list(self.recipes.banks))
        self.ordered_selections: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()  # the pool's
        self.recorder = recorder  # keeps recent frames for the operator's page (opt-in)
        self.settings = settings
        self.counters = WorkerCounters()
        self.load_bank = load_bank
        self.observers: list[Callable[[VerdictMessage], None]] = []  # e.g. metrics, per verdict sent
        self.last_batch = 0  # frames taken in the latest micro-batch: how far behind the worker is
        self.reload: _Reload | None = None
        self.reload_requested = threading.Event()  # set from a signal handler (SIGHUP) or the broker
        self.answered = 0  # frames taken and answered: a pool worker's progress, for its broker
        self.reloads_finished = 0
        self.reload_error: str | None = None
        context = context or zmq.Context.instance()
        self.context = context
        pool = settings.pool_name is not None
        # a short receive queue: backlog stays with capture, which keeps the newest (free run) or
        # waits (triggered), instead of piling up stale frames here; in a pool, the broker's credit
        self.frames = open_socket(
            context,
            zmq.DEALER if pool else zmq.PULL,
            settings.frames_endpoint,
            bind=not pool,
            max_message_bytes=FRAME_BYTES,
            receive_hwm=2 * settings.max_batch + 2 if pool else 2,  # 1 stalls CURVE (test_security.py)
            curve=settings.pool_curve if pool else settings.curve,
        )
        link = PoolLink(self, settings.pool_name) if settings.pool_name is not None else None
        self.inbox = Inbox(self.frames, max_frames=2 * settings.max_batch, max_bytes=QUEUE_BYTES, pool=link)
        self.results = open_socket(
            context, zmq.PUSH, settings.results_endpoint, bind=False, max_message_bytes=None, linger_ms=2000
        )
        self.control = None
        if settings.control_endpoint:
            self.control = open_socket(
                context, zmq.REP, settings.control_endpoint, bind=True, max_message_bytes=REQUEST_BYTES
            )

    def _collect(self) -> list[list[zmq.Frame]]:
        """One micro-batch: the first waiting frame, then more until max_batch, max_wait or the
        batch's byte budget (a frame over it waits for the next batch)."""
        first = self.inbox.take(POLL_MS / 1000)
        if first is None:
            return []
        batch, size = [first], _bytes(first)
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch:
            parts = self.inbox.take(max(deadline - time.monotonic(), 0), budget=BATCH_BYTES - size)
            if parts is None:
                break
            batch.append(parts)
            size += _bytes(parts)
        return batch

    def _send(self, verdict: VerdictMessage, mask_png: bytes | None) -> None:
        self.results.send_multipart(encode_result(verdict, mask_png))
        self.counters.verdicts_out += 1
        for observe in self.observers:
            observe(verdict)

    @property
    def bank(self) -> Bank:
        """The default recipe's bank: the worker's identity to its pool and its status replies."""
        return self.recipes.default

    # ---- bank reload ---------------------------------------------------------------------------
    def _start_reload(self) -> bool:
        if self.reload is not None:
            return True  # one already under way answers this request too
        if self.load_bank is None:
            return False
        log.info("loading a new bank beside bank %s %s", self.bank.bank_id, self.bank.version)
        self.reload = _Reload(self.load_bank)
        return True

    def _bank_reply(self) -> BankReply:
        book = self.recipes
        return BankReply(self.bank.bank_id, self.bank.version, list(book.banks), dict(book.selected))

    def _control(self, parts: Sequence[bytes]) -> list[bytes] | None:
        """A control request's answer, or None when a reload will answer it once swapped in."""
        control = decode_control(parts)
        command = control.command
        if command == "status":
            return encode_reply(self._bank_reply())
        if command == "select":
            assert control.camera is not None and control.recipe is not None
            if control.recipe not in self.recipes.banks:
                return encode_reply(ErrorReply(self.recipes.unknown(control.recipe), "recipe"))
            self.recipes.selected[control.camera] = control.recipe
            log.info(
                "camera %s: recipe %s selected for frames that name no product",
                control.camera,
                control.recipe,
            )
            save_selections(self.settings.selections, self.recipes.selected)
            return encode_reply(self._bank_reply())
        if not self._start_reload():
            return encode_reply(ErrorReply("this worker has no bank store to reload from", "reload"))
        assert self.reload is not None
        self.reload.reply_owed = True
        return None

    def _serve_control(self) -> None:
        if self.control is None or (self.reload is not None and self.reload.reply_owed):
            return  # a REP socket answers the request it holds before it takes another
        if self.control.poll(0):
            answer(self.control, self._control, self.counters.malformed)

    def _swap_if_loaded(self) -> None:
        """Between micro-batches: take the newly loaded bank, and answer whoever asked for it."""
        if self.reload is None or not self.reload.done:
            return
        reload, self.reload = self.reload, None
        self.reloads_finished += 1
        self.reload_error = None
        if isinstance(reload.result, RecipeBook | Bank):
            old, selected, self.recipes = self.bank, self.recipes.selected, RecipeBook.of(reload.result)
            self.recipes.selected = {c: r for c, r in selected.items() if r in self.recipes.banks}
            self.counters.reloads += 1
            log.info(
                "bank %s %s replaced by %s %s", old.bank_id, old.version, self.bank.bank_id, self.bank.version
            )
            reply = encode_reply(self._bank_reply())
        else:
            error = reload.result
            message = str(error) if isinstance(error, EdgeError) else f"{type(error).__name__}: {error}"
            self.reload_error = str(error)[:2000]
            log.error("bank reload failed; bank %s stays: %s", self.bank.version, message)
            reply = encode_reply(ErrorReply(message[:2048], "reload", self.bank.bank_id, self.bank.version))
        if reload.reply_owed:
            assert self.control is not None
            self.control.send_multipart(reply)

    def _take_selections(self, ordered: dict[str, str]) -> None:
        """The pool's selections, as its broker sends them (a recipe this worker lacks is logged)."""
        book = self.recipes
        unknown = sorted({recipe for recipe in ordered.values() if recipe not in book.banks})
        if unknown:
            log.error("the broker selects recipes this worker does not have: %s", ", ".join(unknown))
        taken = {camera: recipe for camera, recipe in ordered.items() if recipe in book.banks}
        if taken != book.selected:
            log.info("recipes selected by the pool: %s", taken or "none (the default judges)")
        book.selected = taken

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> int:
        """Receive and answer one micro-batch; returns the number of messages taken."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self._start_reload()
        self._serve_control()
        self._swap_if_loaded()
        batch = self._collect()
        ordered = None
        while not self.ordered_selections.empty():  # the broker's latest word, which came before
            ordered = self.ordered_selections.get()  # any frame of this batch sent after it
        if ordered is not None:
            self._take_selections(ordered)
        self.last_batch = len(batch)
        frames = []
        for parts in batch:
            self.counters.frames_in += 1
            frame, error_verdict, error = decode_or_error(parts, self.settings.station)
            if frame is not None:
                frames.append(frame)
                continue
            assert error is not None, "a frame that did not decode comes with its error"
            self.counters.malformed.count(error)
            if error_verdict is not None:
                self._send(error_verdict, None)
        outcomes = inspect(frames, self.recipes) if frames else []
        for (_, pixels), inspected in zip(frames, outcomes, strict=True):
            if inspected.failure is not None:
                self.counters.malformed.count(inspected.failure, inspected.verdict.error or "")
            self._send(inspected.verdict, inspected.mask_png)
            if self.recorder is not None:
                self.recorder.offer(inspected.verdict, pixels)
        self.answered += len(batch)
        return len(batch)

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> WorkerCounters:
        """Until `stop`; then the frames already queued, or still arriving (a capture that ended
        just before may still be sending its last), are answered (drain) before closing, until none
        came for DRAIN_IDLE_S. `progress` is called after every completed step (a stuck inference
        stops the calls)."""
        while not stop.is_set():
            self.step()
            progress()
        idle_until = time.monotonic() + DRAIN_IDLE_S
        while time.monotonic() < idle_until:
            if self.step():
                idle_until = time.monotonic() + DRAIN_IDLE_S
        self.close()
        return self.counters

    def close(self) -> None:
        self.inbox.close()
        if self.recorder is not None:
            self.recorder.close()
        for socket in (self.frames, self.results, self.control):
            if socket is not None:
                socket.close()
        if self.settings.curve:
            stop_authenticator(self.context)


def _bytes(parts: list[zmq.Frame]) -> int:
    return sum(len(part) for part in parts)
