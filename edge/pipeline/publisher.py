"""The publisher: takes results from workers (PULL) and publishes them (PUB) on
`verdict.<station>.<camera>` and `mask.<station>.<camera>`, each topic with its own sequence
number, plus `heartbeat.<station>` at a fixed rate; a REP endpoint answers the latest verdict per
camera for late joiners. It also keeps the ledger of triggered frames (edge.pipeline.ledger):
a frame capture announced that no worker answers in time gets a TIMEOUT verdict from here."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import zmq

from edge.pipeline.ledger import Ledger
from edge.protocol import (
    EXPECT_TOPIC,
    SCHEMA_VERSION,
    ProtocolError,
    Verdict,
    VerdictMessage,
    decode_expect,
    decode_verdict,
    encode_verdict,
    verdict_for,
    verdict_topic,
)
from edge.security import CurveServer, stop_authenticator

log = logging.getLogger("edge.publisher")
DRAIN_IDLE_MS = 300  # at shutdown: publishing ends once no result came for this long


@dataclass(frozen=True)
class PublisherSettings:
    station: str
    results_endpoint: str  # bound PULL: workers connect here
    publish_endpoint: str  # bound PUB: subscribers connect here
    latest_endpoint: str | None = None  # bound REP: {"camera": name} → that camera's latest verdict
    heartbeat_s: float = 1.0
    default_deadline_ms: float = 5000.0  # for triggered frames that carry no deadline of their own
    curve: CurveServer | None = None  # encryption and client allow-list on the PUB and REP endpoints


@dataclass
class PublisherCounters:
    published: int = 0
    timeouts: int = 0
    late: int = 0
    malformed: Counter = field(default_factory=Counter)


class Publisher:
    def __init__(self, settings: PublisherSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.counters = PublisherCounters()
        self.sequence: Counter = Counter()
        self.latest: dict[str, bytes] = {}
        context = context or zmq.Context.instance()
        self.results = context.socket(zmq.PULL)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.bind(settings.results_endpoint)
        self.context = context
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        if settings.curve:
            settings.curve.secure(self.pub, context)
        self.pub.bind(settings.publish_endpoint)
        self.rep = None
        if settings.latest_endpoint:
            self.rep = context.socket(zmq.REP)
            self.rep.setsockopt(zmq.LINGER, 0)
            if settings.curve:
                settings.curve.secure(self.rep, context)
            self.rep.bind(settings.latest_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.results, zmq.POLLIN)
        if self.rep is not None:
            self.poller.register(self.rep, zmq.POLLIN)
        self.next_heartbeat = 0.0
        self.ledger = Ledger(settings.default_deadline_ms)

    def _next_seq(self, topic: bytes) -> int:
        self.sequence[topic] += 1
        return self.sequence[topic]

    def _receive(self, parts: list[bytes]) -> None:
        """A worker's result [verdict topic, verdict, mask PNG] or capture's [expect, frame header]."""
        try:
            if bytes(parts[0]) == EXPECT_TOPIC:
                self.ledger.expect(decode_expect(parts), time.monotonic())
                return
            if len(parts) != 3:
                raise ProtocolError("parts", f"expected 3 parts, got {len(parts)}")
            message = decode_verdict(parts[:2])
        except ProtocolError as error:
            self.counters.malformed[error.kind] += 1
            log.warning("malformed message from a worker or capture: %s", error)
            return
        if self.ledger.answer(message.frame_id):
            self._publish(message, parts[2] or None)
        else:
            self.counters.late = self.ledger.late
            log.warning("verdict for %s came after its frame was answered; dropped", message.frame_id)

    def _publish(self, message: VerdictMessage, mask_png: bytes | None) -> None:
        topic = verdict_topic(message.station, message.camera)
        topic, body = encode_verdict(replace(message, seq=self._next_seq(topic)))
        self.pub.send_multipart([topic, body])
        self.latest[message.camera] = body
        self.counters.published += 1
        if mask_png:
            mask_topic = f"mask.{message.station}.{message.camera}".encode()
            header = {
                "schema": SCHEMA_VERSION,
                "seq": self._next_seq(mask_topic),
                "station": message.station,
                "camera": message.camera,
                "frame_id": message.frame_id,
            }
            self.pub.send_multipart([mask_topic, json.dumps(header).encode(), mask_png])

    def _time_out_overdue(self) -> None:
        for header in self.ledger.overdue(time.monotonic()):
            deadline = header.deadline_ms or self.settings.default_deadline_ms
            self.counters.timeouts += 1
            error = f"no verdict within {deadline:.0f} ms"
            self._publish(verdict_for(header, Verdict.TIMEOUT, error=error), None)

    def _answer_latest(self) -> None:
        request = self.rep.recv()
        try:
            camera = json.loads(request).get("camera")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            camera = None
        self.rep.send(self.latest.get(camera, b"null") if isinstance(camera, str) else b"null")

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.settings.heartbeat_s
        topic = f"heartbeat.{self.settings.station}".encode()
        body = {
            "schema": SCHEMA_VERSION,
            "seq": self._next_seq(topic),
            "station": self.settings.station,
            "published": self.counters.published,
        }
        self.pub.send_multipart([topic, json.dumps(body).encode()])

    def step(self, timeout_ms: int = 100) -> bool:
        """Serve one message (or none within `timeout_ms`); True if a result or announcement came."""
        self._heartbeat()
        ready = dict(self.poller.poll(timeout_ms))
        if self.results in ready:
            self._receive(self.results.recv_multipart())
        self._time_out_overdue()
        if self.rep is not None and self.rep in ready:
            self._answer_latest()
        return self.results in ready

    def _answer_unfinished(self) -> None:
        """At shutdown, after the drain: announced frames no worker answered get ERROR, not silence."""
        for header in self.ledger.overdue(float("inf")):
            self._publish(verdict_for(header, Verdict.ERROR, error="not inspected: edge stopped"), None)

    def run(self, stop: threading.Event, progress: Callable[[], None] = lambda: None) -> PublisherCounters:
        """Until `stop`; then results still arriving are published (drain) before closing.
        `progress` is called after every step."""
        while not stop.is_set():
            self.step()
            progress()
        while self.step(DRAIN_IDLE_MS):
            pass
        self._answer_unfinished()
        self.close()
        return self.counters

    def close(self) -> None:
        for socket in (self.results, self.pub, self.rep):
            if socket is not None:
                socket.close()
        if self.settings.curve:
            stop_authenticator(self.context)
