"""The broker: one station's frames spread over a pool of workers, by credit (ZeroMQ's
load-balancing pattern with credit-based flow control).

Captures send frames to the broker's PULL exactly as they would to a single worker. Workers connect
a DEALER to the broker's ROUTER and report (`ready`) how many more frames they can take; the broker
sends a frame only to a worker with credit left, and reads the next frame from the captures only
then, so a slow or dead worker never holds a queue and backpressure reaches the captures as with one
worker. Results go from each worker straight to the publisher.

A worker silent for `worker_timeout_s` is dead: its triggered frames not yet answered are sent once
more, to another worker, while their deadline allows; the publisher's ledger publishes only the
first verdict of a part (or TIMEOUT), so a part never gets two. Free-run frames on a dead worker are
lost and counted.

Every worker scores with the pool's bank: a worker that reports another bank (`bank_id`) is refused;
one that reports another version is sent `reload` and gets no frames until it reports the pool's
version. The pool's version is the first accepted worker's, and after a pool reload the version the
first reloaded worker reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

from edge.pipeline.selections import load_selections, save_selections
from edge.protocol import (
    READY_TOPIC,
    REFUSED_TOPIC,
    RELOAD_TOPIC,
    SELECT_TOPIC,
    BankReply,
    ErrorReply,
    PoolStatusReply,
    PoolWorkerStatus,
    ProtocolError,
    WorkerReady,
    decode_control,
    decode_ready,
    encode_broker_order,
    encode_reply,
    peek_frame,
)
from edge.security import CurveServer, stop_authenticator
from edge.sockets import FRAME_BYTES, REQUEST_BYTES, ErrorTally, answer, open_socket

log = logging.getLogger("edge.broker")
POLL_MS = 50
RELOAD_TIMEOUT_S = 300.0  # a pool reload answers by then, whatever workers have not reported


@dataclass(frozen=True)
class BrokerSettings:
    station: str
    frames_endpoint: str  # bound PULL: captures connect, as to a single worker
    workers_endpoint: str  # bound ROUTER: pool workers connect a DEALER
    control_endpoint: str | None = None  # bound REP: status, and reload for the whole pool
    worker_timeout_s: float = 2.0  # a worker silent this long is dead (workers report every 0.25 s)
    frames_curve: CurveServer | None = None  # captures on other hosts
    workers_curve: CurveServer | None = None  # workers on other hosts
    recipes: tuple[str, ...] = ()  # the station's recipes: what `select` may name
    selections: Path | None = None  # where the pool's recipe selections are kept across restarts


@dataclass
class InFlight:
    """A frame waiting for a worker, or sent and not yet answered; once sent, only triggered frames
    keep their parts (to be sent again)."""

    parts: list[zmq.Frame] | None
    size: int
    deadline: float | None = None  # broker's monotonic clock; None: none given
    resent: bool = False
    triggered: bool = False


@dataclass
class PoolWorker:
    identity: bytes
    name: str
    last_seen: float
    sent: int = 0
    received: int = 0
    answered: int = 0
    capacity: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    capacity_bytes: int = 0
    reloads: int = 0
    bank_id: str = ""
    bank_version: str = ""
    refused: str | None = None  # why it gets no frames
    reload_sent_for: str | None = None  # the pool version it was told to reload to
    in_flight: deque[InFlight] = field(default_factory=deque)

    @property
    def credit(self) -> int:
        """Frames it can take now: its capacity less what is on the way to it."""
        return 0 if self.refused else max(0, self.capacity - (self.sent - self.received))

    def fits(self, size: int) -> bool:
        """It has room for one more frame of `size` bytes (its inbox is bounded in bytes too)."""
        return self.credit > 0 and size <= self.capacity_bytes - (self.sent_bytes - self.received_bytes)


@dataclass
class BrokerCounters:
    frames_in: int = 0
    frames_out: int = 0
    resent: int = 0  # triggered frames sent again after their worker died
    lost_free_run: int = 0  # free-run frames on a worker that died
    lost_triggered: int = 0  # triggered frames not resent (deadline passed, or already resent once)
    workers_joined: int = 0
    workers_died: int = 0
    malformed: ErrorTally = field(default_factory=lambda: ErrorTally("worker report or request", log))


class _PoolReload:
    """A reload request being carried out by every worker; the control reply waits for it."""

    def __init__(self, workers: dict[bytes, PoolWorker]) -> None:
        self.started = time.monotonic()
        self.waiting = {identity for identity, w in workers.items() if not w.refused}  # to report
        self.errors: dict[str, str] = {}
        self.version: str | None = None


class Broker:
    def __init__(self, settings: BrokerSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context = context or zmq.Context.instance()
        self.counters = BrokerCounters()
        self.workers: dict[bytes, PoolWorker] = {}
        self.waiting: deque[InFlight] = deque()  # frames to resend, then at most one new frame
        self.bank: tuple[str, str] | None = None  # the pool's (bank_id, version)
        self.reload: _PoolReload | None = None
        # the pool's recipe per camera for frames that name no product: sent to every worker
        self.selected = load_selections(settings.selections, list(settings.recipes))
        self.frames = open_socket(
            context,
            zmq.PULL,
            settings.frames_endpoint,
            bind=True,
            max_message_bytes=FRAME_BYTES,
            receive_hwm=2,  # backlog stays with the captures, as with a single worker
            curve=settings.frames_curve,
        )
        self.pool = open_socket(
            context,
            zmq.ROUTER,
            settings.workers_endpoint,
            bind=True,
            max_message_bytes=REQUEST_BYTES,
            curve=settings.workers_curve,
        )
        self.pool.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished worker fails, not vanishes
        self.control = None
        if settings.control_endpoint:
            self.control = open_socket(
                context, zmq.REP, settings.control_endpoint, bind=True, max_message_bytes=REQUEST_BYTES
            )

    # ---- workers' reports ------------------------------------------------------------------------
    def _report(self, identity: bytes, parts: Sequence[bytes]) -> None:
        try:
            ready = decode_ready(parts)
        except ProtocolError as error:
            self.counters.malformed.count(error)
            return
        now = time.monotonic()
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = PoolWorker(identity, ready.worker, now)
            self.counters.workers_joined += 1
            log.info("worker %s joined (bank %s %s)", ready.worker, ready.bank_id, ready.bank_version)
            if self.selected:  # a worker starts with none selected
                self._send(worker, encode_broker_order(SELECT_TOPIC, selected=self.selected))
        worker.last_seen = now
        done = min(ready.answered, worker.sent) - worker.answered
        for _ in range(max(0, done)):
            worker.in_flight.popleft()
        worker.answered = max(worker.answered, min(ready.answered, worker.sent))
        worker.received, worker.capacity = min(ready.received, worker.sent), ready.capacity
        worker.received_bytes = min(ready.received_bytes, worker.sent_bytes)
        worker.capacity_bytes = ready.capacity_bytes
        worker.bank_id, worker.bank_version = ready.bank_id, ready.bank_version
        if ready.reloads != worker.reloads:
            worker.reloads = ready.reloads
            self._reload_reported(worker, ready)
        self._check_bank(worker)

    def _check_bank(self, worker: PoolWorker) -> None:
        if self.bank is None:
            self.bank = (worker.bank_id, worker.bank_version)
        bank_id, version = self.bank
        was = worker.refused
        if worker.bank_id != bank_id:
            worker.refused = f"it scores with bank {worker.bank_id}; this line's bank is {bank_id}"
        elif worker.bank_version != version:
            worker.refused = f"it has bank version {worker.bank_version}; the pool runs {version}"
            if worker.reload_sent_for != version and self.reload is None:
                worker.reload_sent_for = version
                self._send(worker, encode_broker_order(RELOAD_TOPIC))
        else:
            worker.refused = None
        if worker.refused and worker.refused != was:
            log.error("worker %s gets no frames: %s", worker.name, worker.refused)
            self._send(worker, encode_broker_order(REFUSED_TOPIC, worker.refused))
        elif was and not worker.refused:
            log.info("worker %s now has the pool's bank %s %s; it gets frames again", worker.name, *self.bank)

    def _send(self, worker: PoolWorker, parts: Sequence[Any]) -> bool:
        try:
            self.pool.send_multipart([worker.identity, *parts], copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: its connection is gone, so is the worker
            log.warning("worker %s is unreachable (%s)", worker.name, exc.strerror)
            self._bury(worker, "unreachable")
            return False

    def _bury_silent(self) -> None:
        """Workers silent past the timeout are dead."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if now - worker.last_seen > self.settings.worker_timeout_s:
                self._bury(worker, f"silent for {now - worker.last_seen:.1f} s")

    def _bury(self, worker: PoolWorker, why: str) -> None:
        """A dead worker's triggered frames go once more, to others, while their deadline allows."""
        now = time.monotonic()
        if self.workers.pop(worker.identity, None) is None:
            return
        self.counters.workers_died += 1
        again = []
        for frame in worker.in_flight:
            if not frame.triggered:
                self.counters.lost_free_run += 1
            elif frame.resent or (frame.deadline is not None and frame.deadline <= now):
                self.counters.lost_triggered += 1
            else:
                frame.resent = True
                again.append(frame)
        self.waiting.extendleft(reversed(again))  # ahead of any new frame, in their order
        log.error("worker %s is dead (%s); %d frames were on it, %d to send again",
                  worker.name, why, len(worker.in_flight), len(again))  # fmt: skip
        if self.reload is not None:
            self.reload.waiting.discard(worker.identity)

    # ---- frames ----------------------------------------------------------------------------------
    def _next_worker(self, size: int = 0) -> PoolWorker | None:
        """The worker with the most credit that has room for `size` bytes (ties: the one sent to
        least), or None."""
        ready = [w for w in self.workers.values() if w.fits(size)]
        return max(ready, key=lambda w: (w.credit, -w.sent)) if ready else None

    def _dispatch(self, worker: PoolWorker, frame: InFlight) -> None:
        assert frame.parts is not None, "a waiting frame keeps its parts"
        if not self._send(worker, frame.parts):  # not delivered: first in line for the next worker
            self.waiting.appendleft(frame)
            return
        worker.sent += 1
        worker.sent_bytes += frame.size
        if not frame.triggered:
            frame.parts = None  # never sent again: the pixels need not be held
        worker.in_flight.append(frame)
        self.counters.frames_out += 1
        self.counters.resent += frame.resent

    def _pump(self) -> int:
        """Send what can be sent now, in order: frames to resend, then new ones. A new frame is
        read from the captures only when nothing waits and some worker has credit, so the broker
        holds at most one new frame (plus a dead worker's triggered ones)."""
        moved = 0
        now = time.monotonic()
        while True:
            if not self.waiting:
                if self._next_worker() is None or not self.frames.poll(0):
                    return moved
                parts = self.frames.recv_multipart(copy=False)
                self.counters.frames_in += 1
                self.waiting.append(_in_flight(parts, now))
            frame = self.waiting[0]
            if frame.resent and frame.deadline is not None and frame.deadline <= now:
                self.waiting.popleft()
                self.counters.lost_triggered += 1  # the publisher has answered TIMEOUT
                continue
            worker = self._next_worker(frame.size)
            if worker is None:
                return moved  # it waits for a worker with room for it
            self.waiting.popleft()
            self._dispatch(worker, frame)
            moved += 1

    # ---- control (status, pool reload) -------------------------------------------------------------
    def worker_states(self) -> dict[str, int]:
        """Workers connected, by state (working, refused)."""
        refused = sum(1 for w in self.workers.values() if w.refused)
        return {"working": len(self.workers) - refused, "refused": refused}

    def in_flight(self) -> dict[str, int]:
        """Frames sent to each worker and not yet answered, by its name."""
        return {w.name: len(w.in_flight) for w in self.workers.values()}

    def _status(self) -> PoolStatusReply:
        bank_id, version = self.bank or (None, None)
        workers = [
            asdict(PoolWorkerStatus(w.name, w.bank_id, w.bank_version, w.sent, len(w.in_flight), w.credit,
                                    w.refused))
            for w in self.workers.values()
        ]  # fmt: skip
        return PoolStatusReply(bank_id, version, workers, list(self.settings.recipes), dict(self.selected))

    def _select(self, camera: str, recipe: str) -> list[bytes]:
        """A camera's recipe for the whole pool: kept, and sent to every worker (new ones get it
        when they join)."""
        recipes = self.settings.recipes
        if recipe not in recipes:
            known = ", ".join(recipes) or "not known to the broker"
            why = f"unknown recipe {recipe!r}: this station's recipes are {known}"
            return encode_reply(ErrorReply(why, "recipe"))
        self.selected[camera] = recipe
        save_selections(self.settings.selections, self.selected)
        for worker in self.workers.values():
            self._send(worker, encode_broker_order(SELECT_TOPIC, selected=self.selected))
        log.info("camera %s: recipe %s selected for the pool's frames that name no product", camera, recipe)
        return encode_reply(self._status())

    def _control(self, parts: Sequence[bytes]) -> list[bytes] | None:
        control = decode_control(parts)
        command = control.command
        if command == "status":
            return encode_reply(self._status())
        if command == "select":
            assert control.camera is not None and control.recipe is not None
            return self._select(control.camera, control.recipe)
        if not any(not w.refused for w in self.workers.values()):
            return encode_reply(ErrorReply("no worker in the pool to reload", "reload"))
        self.reload = _PoolReload(self.workers)
        for identity in self.reload.waiting:
            self._send(self.workers[identity], encode_broker_order(RELOAD_TOPIC))
        log.info("reloading the bank on %d workers", len(self.reload.waiting))
        return None

    def _reload_reported(self, worker: PoolWorker, ready: WorkerReady) -> None:
        reload = self.reload
        if reload is None or worker.identity not in reload.waiting:
            return
        reload.waiting.discard(worker.identity)
        if ready.reload_error:
            reload.errors[worker.name] = ready.reload_error
        elif reload.version is None:
            reload.version = ready.bank_version
            self.bank = (ready.bank_id, ready.bank_version)

    def _finish_reload(self) -> None:
        reload = self.reload
        if reload is None or (reload.waiting and time.monotonic() - reload.started < RELOAD_TIMEOUT_S):
            return
        self.reload = None
        for identity in reload.waiting:
            if identity in self.workers:
                reload.errors[self.workers[identity].name] = "no answer"
        for worker in self.workers.values():
            self._check_bank(worker)
        bank_id, version = self.bank or (None, None)
        if reload.errors:
            error = "; ".join(f"{name}: {why}" for name, why in reload.errors.items())
            log.error("pool reload: %s", error)
            reply = encode_reply(ErrorReply(error[:2048], "reload", bank_id, version))
        else:
            log.info("pool reloaded: bank %s %s", bank_id, version)
            reply = encode_reply(BankReply(bank_id, version))
        assert self.control is not None
        self.control.send_multipart(reply)

    # ---- the loop --------------------------------------------------------------------------------
    def step(self, timeout_ms: int = POLL_MS) -> int:
        """Wait for something to do (at most `timeout_ms`), do it; returns frames moved."""
        poller = zmq.Poller()
        poller.register(self.pool, zmq.POLLIN)
        if self.control is not None and self.reload is None:
            poller.register(self.control, zmq.POLLIN)
        if not self.waiting and self._next_worker() is not None:  # else a frame waits for room
            poller.register(self.frames, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        while self.pool.poll(0):
            identity, *parts = self.pool.recv_multipart()
            if parts and parts[0] == READY_TOPIC:
                self._report(identity, parts)
            else:
                self.counters.malformed.count("topic", f"unexpected message from a worker: {parts[:1]!r}")
        if self.control is not None and events.get(self.control):
            answer(self.control, self._control, self.counters.malformed)
        self._bury_silent()
        self._finish_reload()
        return self._pump()

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> BrokerCounters:
        """Until `stop` is set; then frames still arriving from the captures are passed on while
        workers take them (the captures drain first), and in-flight frames are waited for."""
        while not stop.is_set():
            self.step()
            progress()
        drain_until = time.monotonic() + self.settings.worker_timeout_s
        while time.monotonic() < drain_until:
            moved = self.step()
            if moved:
                drain_until = time.monotonic() + self.settings.worker_timeout_s
            elif not self.waiting and not any(w.in_flight for w in self.workers.values()):
                break
        self.close()
        return self.counters

    def close(self) -> None:
        for socket in (self.frames, self.pool, self.control):
            if socket is not None:
                socket.close()
        if self.settings.frames_curve or self.settings.workers_curve:
            stop_authenticator(self.context)


def _in_flight(parts: list[zmq.Frame], now: float) -> InFlight:
    """A frame from a capture, with its size and, for a triggered one, its deadline."""
    size = sum(len(part) for part in parts)
    header = peek_frame(parts)
    if header is None or header.trigger != "triggered":
        return InFlight(parts, size)
    deadline = None if header.deadline_ms is None else now + header.deadline_ms / 1000
    return InFlight(parts, size, deadline, triggered=True)
