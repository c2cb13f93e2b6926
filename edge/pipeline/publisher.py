"""The publisher: takes results from workers (PULL) and publishes them (PUB) on
`verdict.<station>.<camera>.` and `mask.<station>.<camera>.`, each topic with its own sequence
number, plus `heartbeat.<station>.` at a fixed rate; a REP endpoint answers the latest verdict per
camera, and the recent verdicts a subscriber missed. It also keeps the ledger of triggered frames
(edge.pipeline.ledger): a frame capture announced that no worker answers in time gets a TIMEOUT
verdict from here.

Every message names the publisher's `epoch` (its start, in microseconds since 1970), and sequence
numbers restart at 1 with each epoch, so a subscriber tells a restart from a loss. A new publisher
holds what it has to publish for `startup_hold_s`, long enough for subscribers to reconnect, so the
results that waited for it in the workers' queues are not published to nobody.

Verdicts leave in capture order per camera: a verdict waits while an earlier announced (triggered)
frame of its camera has no verdict yet (several workers answer out of order), at most
`reorder_window_ms`; past that it is published as it stands and counted (`reordered_gaps`).
Free-run frames are not announced, so their verdicts wait only behind held ones.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import zmq

from edge.pipeline.ledger import Ledger
from edge.pipeline.replay import ReplayStore
from edge.protocol import (
    CAMERA_TOPIC,
    EXPECT_TOPIC,
    MAX_CAMERAS,
    CameraState,
    Heartbeat,
    LatestReply,
    MaskHeader,
    ProtocolError,
    ReplayReply,
    Verdict,
    VerdictMessage,
    decode_camera_report,
    decode_expect,
    decode_query,
    decode_result,
    encode_heartbeat,
    encode_mask,
    encode_reply,
    encode_verdict,
    topic,
    verdict_body,
    verdict_for,
)
from edge.security import CurveServer, stop_authenticator
from edge.sockets import FRAME_BYTES, LOG_EVERY, REQUEST_BYTES, ErrorTally, answer, open_socket

log = logging.getLogger("edge.publisher")
DRAIN_IDLE_MS = 300  # at shutdown: publishing ends once no result came for this long
# a replay reply's verdicts stop short of this many bytes of JSON: every reply fits the request cap
REPLAY_PAGE_BYTES = REQUEST_BYTES - 8 * 1024
CAMERA_SILENT_S = 5.0  # a capture that reported no camera state for this long is reported silent


@dataclass(frozen=True)
class PublisherSettings:
    station: str
    results_endpoint: str  # bound PULL: workers connect here
    publish_endpoint: str  # bound PUB: subscribers connect here
    latest_endpoint: str | None = None  # bound REP: latest verdict per camera, and replays
    heartbeat_s: float = 1.0
    default_deadline_ms: float = 5000.0  # for triggered frames that carry no deadline of their own
    curve: CurveServer | None = None  # encryption and client allow-list on the PUB and REP endpoints
    # nothing but heartbeats is published this long after start (the station's setting, 1 s by
    # default, is for restarts under edge-run or systemd; a publisher in a test starts at once)
    startup_hold_s: float = 0.0
    journal: Path | None = None  # the ledger's journal: a restarted publisher takes over its parts
    cameras: tuple[str, ...] = ()  # results for other cameras are refused (empty: any camera)
    reorder_window_ms: float = 1000.0  # longest a verdict waits for an earlier frame's
    replay: Path | None = None  # the verdicts kept for replay (SQLite); None: in memory
    replay_s: float = 3600.0  # how long each verdict is kept for replay


@dataclass
class PublisherCounters:
    published: int = 0
    timeouts: int = 0
    reordered_gaps: int = 0  # verdicts published before an earlier frame's (its wait ran out)
    malformed: ErrorTally = field(default_factory=lambda: ErrorTally("result or request", log))


class Publisher:
    def __init__(self, settings: PublisherSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.counters = PublisherCounters()
        self.epoch = time.time_ns() // 1000
        self.sequence: Counter = Counter()
        self.latest: dict[str, dict] = {}
        self.replay = ReplayStore(settings.replay, settings.replay_s)
        self.held: list[tuple[VerdictMessage, bytes | None]] = []  # results waiting for the hold's end
        # per camera, verdicts waiting for earlier frames': (capture ns, tiebreak, arrival s, verdict, mask)
        self.waiting: dict[str, list[tuple]] = {}
        self._arrivals = itertools.count()
        self.ledger = Ledger(settings.default_deadline_ms, journal=settings.journal)
        context = context or zmq.Context.instance()
        self.context = context
        self.results = open_socket(
            context, zmq.PULL, settings.results_endpoint, bind=True, max_message_bytes=FRAME_BYTES
        )
        # a PUB socket receives only subscriptions: they are capped like requests
        self.pub = open_socket(
            context,
            zmq.PUB,
            settings.publish_endpoint,
            bind=True,
            max_message_bytes=REQUEST_BYTES,
            linger_ms=1000,
            curve=settings.curve,
        )
        self.rep = None
        if settings.latest_endpoint:
            self.rep = open_socket(
                context,
                zmq.REP,
                settings.latest_endpoint,
                bind=True,
                max_message_bytes=REQUEST_BYTES,
                curve=settings.curve,
            )
        self.poller = zmq.Poller()
        self.poller.register(self.results, zmq.POLLIN)
        if self.rep is not None:
            self.poller.register(self.rep, zmq.POLLIN)
        self.next_heartbeat = 0.0
        self.started = time.monotonic()
        self.started_utc = datetime.now(UTC).isoformat()
        self.camera_states: dict[str, tuple[CameraState, float]] = {}  # newest report, when it came
        self.publish_from = time.monotonic() + settings.startup_hold_s

    def _next_seq(self, topic: bytes) -> int:
        self.sequence[topic] += 1
        return self.sequence[topic]

    def _receive(self, parts: Sequence[bytes]) -> None:
        """A worker's result [verdict topic, verdict, mask PNG] or capture's [expect, frame header]."""
        try:
            if bytes(parts[0]) == CAMERA_TOPIC:
                station, camera, state = decode_camera_report(parts)
                self._check_source(station, camera)
                if camera not in self.camera_states and len(self.camera_states) >= MAX_CAMERAS:
                    raise ProtocolError("camera", f"more than {MAX_CAMERAS} cameras report their state")
                self.camera_states[camera] = (state, time.monotonic())
                return
            if bytes(parts[0]) == EXPECT_TOPIC:
                header = decode_expect(parts)
                self._check_source(header.station, header.camera)
                self.ledger.expect(header, time.monotonic())
                return
            message, mask_png = decode_result(parts)
            self._check_source(message.station, message.camera)
        except ProtocolError as error:
            self.counters.malformed.count(error)
            return
        if not self.ledger.answer(message.frame_id):  # a repeat, or its part was answered
            if self.ledger.late % LOG_EVERY == 1:  # a peer repeating ids must not flood the log
                log.warning("verdict for %s came after its frame was answered; dropped (%d so far)",
                            message.frame_id, self.ledger.late)  # fmt: skip
        elif time.monotonic() < self.publish_from:
            self.held.append((message, mask_png))
        else:
            self._enqueue(message, mask_png)

    def _check_source(self, station: str, camera: str) -> None:
        if station != self.settings.station:
            raise ProtocolError(
                "station", f"a result for station {station!r} reached {self.settings.station!r}"
            )
        if self.settings.cameras and camera not in (*self.settings.cameras, "unknown"):
            raise ProtocolError("camera", f"camera {camera!r} is not in this station's configuration")

    def _publish(self, message: VerdictMessage, mask_png: bytes | None) -> None:
        verdict_topic = topic("verdict", message.station, message.camera)
        message = replace(message, epoch=self.epoch, seq=self._next_seq(verdict_topic))
        body = verdict_body(message)
        self.replay.add(message.camera, self.epoch, message.seq, body)  # kept before it is sent
        self.pub.send_multipart(encode_verdict(message))
        self.latest[message.camera] = body
        self.counters.published += 1
        self.ledger.published(message.frame_id, triggered=message.part_id is not None)
        if mask_png:
            mask_topic = topic("mask", message.station, message.camera)
            header = MaskHeader(
                message.station, message.camera, message.frame_id, self.epoch, self._next_seq(mask_topic)
            )
            self.pub.send_multipart(encode_mask(header, mask_png))

    def _release_held(self) -> None:
        if self.held and time.monotonic() >= self.publish_from:
            held, self.held = self.held, []
            for message, mask_png in held:
                self._enqueue(message, mask_png)

    # ---- capture order -------------------------------------------------------------------------
    def _enqueue(self, message: VerdictMessage, mask_png: bytes | None) -> None:
        entry = (message.capture_monotonic_ns, next(self._arrivals), time.monotonic(), message, mask_png)
        heapq.heappush(self.waiting.setdefault(message.camera, []), entry)
        self._release_in_order()

    def _release_in_order(self, flush: bool = False) -> None:
        """Publish every waiting verdict no earlier frame holds back (or whose wait ran out)."""
        now = time.monotonic()
        window_s = self.settings.reorder_window_ms / 1000
        for camera, queue in self.waiting.items():
            while queue:
                capture_ns, _, arrived, message, mask_png = queue[0]
                blocked = self.ledger.waiting_before(camera, capture_ns)
                if blocked and not flush and now - arrived < window_s:
                    break
                if blocked:
                    self.counters.reordered_gaps += 1
                heapq.heappop(queue)
                self._publish(message, mask_png)

    def _time_out_overdue(self) -> None:
        if time.monotonic() < self.publish_from:
            return
        for header in self.ledger.overdue(time.monotonic()):  # (not those whose verdict waits)
            deadline = header.deadline_ms or self.settings.default_deadline_ms
            self.counters.timeouts += 1
            error = f"no verdict within {deadline:.0f} ms"
            self._enqueue(verdict_for(header, Verdict.TIMEOUT, error=error, reason="deadline"), None)

    def _query(self, parts: Sequence[bytes]) -> list[bytes]:
        query = decode_query(parts)
        if query.after_seq is None:
            latest = self.latest.get(query.camera) or self.replay.latest(query.camera)
            return encode_reply(LatestReply(self.epoch, latest))
        assert query.epoch is not None  # decode_query: they go together
        page = self.replay.page(query.camera, query.epoch, query.after_seq, REPLAY_PAGE_BYTES)
        missing = [m.wire() for m in page.missing]
        complete = page.known and not page.missing
        return encode_reply(ReplayReply(self.epoch, page.verdicts, page.more, missing, page.known, complete))

    def cameras_now(self) -> dict[str, CameraState]:
        """Each camera's newest reported state; silent where its capture stopped reporting (or,
        CAMERA_SILENT_S after the publisher started, never reported)."""
        now = time.monotonic()
        states: dict[str, CameraState] = {}
        for name in sorted({*self.settings.cameras, *self.camera_states}):
            state, received = self.camera_states.get(name, (None, self.started))
            if now - received <= CAMERA_SILENT_S and state is not None:
                states[name] = state
            elif now - received > CAMERA_SILENT_S:
                why = f"its capture process has reported nothing for {now - received:.0f} s"
                last = state or CameraState("silent", self.started_utc)
                states[name] = replace(last, state="silent", reason=why)
        return states

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.settings.heartbeat_s
        beat_topic = topic("heartbeat", self.settings.station)
        beat = Heartbeat(
            self.settings.station,
            published=self.counters.published,
            cameras={name: asdict(state) for name, state in self.cameras_now().items()},
            epoch=self.epoch,
            seq=self._next_seq(beat_topic),
        )
        self.pub.send_multipart(encode_heartbeat(beat))

    def step(self, timeout_ms: int = 100) -> bool:
        """Serve one message (or none within `timeout_ms`); True if a result or announcement came."""
        self._heartbeat()
        ready = dict(self.poller.poll(timeout_ms))
        if self.results in ready:
            self._receive(self.results.recv_multipart())
        self._release_held()
        self._time_out_overdue()
        self._release_in_order()
        if self.rep is not None and self.rep in ready:
            answer(self.rep, self._query, self.counters.malformed)
        return self.results in ready

    def _answer_unfinished(self) -> None:
        """At shutdown, after the drain: announced frames no worker answered get ERROR, not silence."""
        self.publish_from = 0.0
        self._release_held()
        for header in self.ledger.overdue(float("inf")):
            error = "not inspected: edge stopped"
            self._enqueue(verdict_for(header, Verdict.ERROR, error=error, reason="stopped"), None)
        self._release_in_order(flush=True)

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
        self.ledger.close()
        self.replay.close()
        for socket in (self.results, self.pub, self.rep):
            if socket is not None:
                socket.close()
        if self.settings.curve:
            stop_authenticator(self.context)
