"""The worker: receives frames (PULL), micro-batches them, inspects them, and passes every result on
(PUSH to the publisher). Every frame that named itself gets exactly one verdict."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import zmq

from edge.pipeline.inspection import Bank, decode_or_error, inspect
from edge.protocol import VerdictMessage, encode_verdict

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


@dataclass
class WorkerCounters:
    frames_in: int = 0
    verdicts_out: int = 0
    malformed: Counter = field(default_factory=Counter)


def encode_result(verdict: VerdictMessage, mask_png: bytes | None) -> list[bytes]:
    """Worker → publisher: the verdict message's two parts, then the mask PNG (empty if none)."""
    return [*encode_verdict(verdict), mask_png or b""]


class Worker:
    def __init__(self, bank: Bank, settings: WorkerSettings, context: zmq.Context | None = None) -> None:
        self.bank = bank
        self.settings = settings
        self.counters = WorkerCounters()
        context = context or zmq.Context.instance()
        self.frames = context.socket(zmq.PULL)
        self.frames.setsockopt(zmq.LINGER, 0)
        # a short receive queue: backlog stays with capture, which keeps the newest (free run) or
        # waits (triggered), instead of piling up stale frames here
        self.frames.setsockopt(zmq.RCVHWM, 2 * settings.max_batch)
        self.frames.bind(settings.frames_endpoint)
        self.results = context.socket(zmq.PUSH)
        self.results.setsockopt(zmq.LINGER, 2000)
        self.results.connect(settings.results_endpoint)

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

    def step(self) -> int:
        """Receive and answer one micro-batch; returns the number of messages taken."""
        batch = self._collect()
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

    def run(self, stop: threading.Event) -> WorkerCounters:
        while not stop.is_set():
            self.step()
        self.close()
        return self.counters

    def close(self) -> None:
        self.frames.close()
        self.results.close()
