"""The worker: receives frames (PULL), micro-batches them, inspects them, and passes every result on
(PUSH to the publisher). Every frame that named itself gets exactly one verdict.

Bank reload: on a control request (REP, `{"command": "reload"}`) or `request_reload()` (SIGHUP), the
new bank is loaded on a side thread while the old one keeps scoring, and swapped in between two
micro-batches: frames taken before the swap are scored by the old bank, frames after it by the new,
none twice, and each verdict names the bank version that scored it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from edge.errors import EdgeError
from edge.pipeline.inspection import Bank, decode_or_error, inspect
from edge.protocol import VerdictMessage, encode_result
from edge.security import CurveServer, stop_authenticator

log = logging.getLogger("edge.worker")
POLL_MS = 100
LOG_EVERY = 1000  # a malformed-message kind is logged the first time, then once per this many


@dataclass(frozen=True)
class WorkerSettings:
    station: str
    frames_endpoint: str  # bound PULL: capture processes connect here
    results_endpoint: str  # connected PUSH: the publisher binds here
    max_batch: int = 8
    max_wait_ms: float = 5.0
    control_endpoint: str | None = None  # bound REP: reload requests
    curve: CurveServer | None = None  # on the frames PULL, when captures connect from other hosts


@dataclass
class WorkerCounters:
    frames_in: int = 0
    verdicts_out: int = 0
    reloads: int = 0
    malformed: Counter = field(default_factory=Counter)


class _Reload:
    """A bank being loaded beside the scoring loop, and the control request waiting for its answer."""

    def __init__(self, load: Callable[[], Bank]) -> None:
        self.result: Bank | Exception | None = None
        self.thread = threading.Thread(target=self._load, args=(load,), name="bank-reload", daemon=True)
        self.thread.start()
        self.reply_owed = False

    def _load(self, load: Callable[[], Bank]) -> None:
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
        bank: Bank,
        settings: WorkerSettings,
        context: zmq.Context | None = None,
        load_bank: Callable[[], Bank] | None = None,
    ) -> None:
        self.bank = bank
        self.settings = settings
        self.counters = WorkerCounters()
        self.load_bank = load_bank
        self.observers: list[Callable[[VerdictMessage], None]] = []  # e.g. metrics, per verdict sent
        self.last_batch = 0  # frames taken in the latest micro-batch: how far behind the worker is
        self.reload: _Reload | None = None
        self.reload_requested = threading.Event()  # set from a signal handler (SIGHUP)
        context = context or zmq.Context.instance()
        self.frames = context.socket(zmq.PULL)
        self.frames.setsockopt(zmq.LINGER, 0)
        # a short receive queue: backlog stays with capture, which keeps the newest (free run) or
        # waits (triggered), instead of piling up stale frames here
        self.frames.setsockopt(zmq.RCVHWM, 2 * settings.max_batch)
        self.context = context
        if settings.curve:
            settings.curve.secure(self.frames, context)
        self.frames.bind(settings.frames_endpoint)
        self.results = context.socket(zmq.PUSH)
        self.results.setsockopt(zmq.LINGER, 2000)
        self.results.connect(settings.results_endpoint)
        self.control = None
        if settings.control_endpoint:
            self.control = context.socket(zmq.REP)
            self.control.setsockopt(zmq.LINGER, 0)
            self.control.bind(settings.control_endpoint)

    def _collect(self) -> list[list[zmq.Frame]]:
        """One micro-batch: the first waiting frame, then more until max_batch or max_wait."""
        if not self.frames.poll(POLL_MS):
            return []
        batch = [self.frames.recv_multipart(copy=False)]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not self.frames.poll(remaining_ms):
                break
            batch.append(self.frames.recv_multipart(copy=False))
        return batch

    def _malformed(self, kind: str) -> None:
        self.counters.malformed[kind] += 1
        if self.counters.malformed[kind] % LOG_EVERY == 1:
            log.warning("malformed frame message (%s), %d so far", kind, self.counters.malformed[kind])

    def _send(self, verdict: VerdictMessage, mask_png: bytes | None) -> None:
        self.results.send_multipart(encode_result(verdict, mask_png))
        self.counters.verdicts_out += 1
        for observe in self.observers:
            observe(verdict)

    # ---- bank reload ---------------------------------------------------------------------------
    def _start_reload(self) -> bool:
        if self.reload is not None:
            return True  # one already under way answers this request too
        if self.load_bank is None:
            return False
        log.info("loading a new bank beside bank %s %s", self.bank.bank_id, self.bank.version)
        self.reload = _Reload(self.load_bank)
        return True

    def _serve_control(self) -> None:
        if self.control is None or (self.reload is not None and self.reload.reply_owed):
            return
        if not self.control.poll(0):
            return
        request = self.control.recv()
        try:
            command = json.loads(request).get("command")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            command = None
        if command == "reload" and self._start_reload():
            self.reload.reply_owed = True
            return
        if command == "status":
            reply = {"ok": True, "bank_id": self.bank.bank_id, "bank_version": self.bank.version}
        else:
            reply = {"ok": False, "error": f"unknown or impossible command {command!r}"}
        self.control.send(json.dumps(reply).encode())

    def _swap_if_loaded(self) -> None:
        """Between micro-batches: take the newly loaded bank, and answer whoever asked for it."""
        if self.reload is None or not self.reload.done:
            return
        reload, self.reload = self.reload, None
        if isinstance(reload.result, Bank):
            old, self.bank = self.bank, reload.result
            self.counters.reloads += 1
            log.info(
                "bank %s %s replaced by %s %s", old.bank_id, old.version, self.bank.bank_id, self.bank.version
            )
            reply = {"ok": True, "bank_id": self.bank.bank_id, "bank_version": self.bank.version}
        else:
            error = reload.result
            message = str(error) if isinstance(error, EdgeError) else f"{type(error).__name__}: {error}"
            log.error("bank reload failed; bank %s stays: %s", self.bank.version, message)
            reply = {"ok": False, "error": message, "bank_version": self.bank.version}
        if reload.reply_owed:
            self.control.send(json.dumps(reply).encode())

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> int:
        """Receive and answer one micro-batch; returns the number of messages taken."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self._start_reload()
        self._serve_control()
        self._swap_if_loaded()
        batch = self._collect()
        self.last_batch = len(batch)
        frames = []
        for parts in batch:
            self.counters.frames_in += 1
            frame, error_verdict, kind = decode_or_error(parts, self.settings.station)
            if frame is not None:
                frames.append(frame)
                continue
            self._malformed(kind or "unknown")
            if error_verdict is not None:
                self._send(error_verdict, None)
        for inspected in inspect(frames, self.bank) if frames else []:
            self._send(inspected.verdict, inspected.mask_png)
        return len(batch)

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> WorkerCounters:
        """Until `stop`; then the frames already queued are still answered (drain) before closing.
        `progress` is called after every completed step (a stuck inference stops the calls)."""
        while not stop.is_set():
            self.step()
            progress()
        while self.step():
            pass
        self.close()
        return self.counters

    def close(self) -> None:
        for socket in (self.frames, self.results, self.control):
            if socket is not None:
                socket.close()
        if self.settings.curve:
            stop_authenticator(self.context)
