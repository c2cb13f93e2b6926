"""A subscriber library for PLC bridges and MES clients: verdicts, masks and heartbeats, with loss
and restart detection. It needs pyzmq and numpy only (`pip install edge`, no extras).

with Subscriber("tcp://station:5556", station="line1", query_endpoint="tcp://station:5557") as sub:
    for event in sub.events(timeout_s=5):
        ...  # event.verdict (VerdictMessage), event.mask_png or event.heartbeat;
             # event.gap: messages lost just before it; event.restart: the publisher restarted

Every published message names the publisher's epoch and a per-topic sequence number. A jump in the
sequence within an epoch is a loss (PUB/SUB drops under load); a new epoch is a restart, and the
sequence starts again at 1. With `query_endpoint` (the publisher's latest/replay endpoint), verdicts
missed in a gap, at a restart or while away (`resume`) are fetched from the publisher, page by
page, and delivered, marked `replayed`, before the message that revealed the loss; a verdict
already delivered (same frame id) is never delivered twice. What the publisher no longer holds is
a `Loss` with its exact range (`take_losses`); a publisher that does not answer is asked again
every RETRY_S until it does.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import zmq

from edge.protocol import (
    Heartbeat,
    MaskHeader,
    ProtocolError,
    Query,
    ReplayReply,
    VerdictMessage,
    decode_heartbeat,
    decode_mask,
    decode_reply,
    decode_verdict,
    encode_control,
    encode_query,
    is_name,
    parse_topic,
    verdict_from_body,
)
from edge.protocol import (
    topic as topic_of,
)
from edge.security import CurveClient
from edge.sockets import REPLY_BYTES, ErrorTally, check_endpoint, open_socket

log = logging.getLogger("edge.client")
PROBE_S = 2.0  # a running worker answers a status request at once (between two micro-batches)
REMEMBERED_FRAMES = 100_000  # frame ids of delivered verdicts, to drop duplicates after a restart
REMEMBERED_LOSSES = 1000  # losses not yet taken by the application
RETRY_S = 1.0  # a replay the publisher did not answer is asked again this often


@dataclass
class Event:
    topic: str
    seq: int
    gap: int  # messages on this topic known lost just before this one (after what a replay recovered)
    epoch: int = 0
    restart: bool = False  # the publisher restarted since the previous message on this topic
    replayed: bool = False  # fetched from the publisher after a gap or restart, not heard live
    verdict: VerdictMessage | None = None
    mask_png: bytes | None = None
    frame_id: str | None = None  # for masks: the frame whose verdict it belongs to
    heartbeat: Heartbeat | None = None


@dataclass(frozen=True)
class Loss:
    """Messages of `topic` the publisher sent and no longer holds: seq `from_seq`..`to_seq` of
    `epoch` (to_seq None: from there on, an unknown number: the station kept no trace of them)."""

    topic: str
    epoch: int
    from_seq: int
    to_seq: int | None

    @property
    def count(self) -> int | None:
        return None if self.to_seq is None else self.to_seq - self.from_seq + 1

    def __str__(self) -> str:
        end = "?" if self.to_seq is None else self.to_seq
        what = "an unknown number of" if self.count is None else str(self.count)
        return f"{what} message(s) of {self.topic} lost: epoch {self.epoch}, seq {self.from_seq}..{end}"


def subscription(kind: str, station: str = "", camera: str = "") -> bytes:
    """The prefix for `kind` messages of one station (and camera), ending with a dot."""
    for name in (station, camera):
        if name and not is_name(name):
            raise ValueError(f"{name!r} is not a station or camera name")
    return topic_of(kind, station, camera)


def request(
    endpoint: str,
    parts: list[bytes],
    timeout_s: float,
    context: zmq.Context | None = None,
    shape: type | None = None,
) -> dict | None:
    """One REQ/REP exchange; the decoded reply (checked against `shape`, the reply the request
    expects when it succeeds, where given), or None if none came within `timeout_s`."""
    check_endpoint(endpoint)
    own = context is None
    context = context or zmq.Context()
    socket = open_socket(context, zmq.REQ, endpoint, bind=False, max_message_bytes=REPLY_BYTES)
    try:
        socket.send_multipart(parts)
        if not socket.poll(int(timeout_s * 1000)):
            return None
        return decode_reply(socket.recv_multipart(), shape)
    finally:
        socket.close(linger=0)
        if own:
            context.term()


def control_request(endpoint: str, command: str, timeout_s: float) -> dict | None:
    """One request to a worker's control endpoint ("status" or "reload"); its reply, or None if
    none came within `timeout_s` (no worker, or one still starting)."""
    return request(endpoint, encode_control(command), timeout_s)


def select_recipe(endpoint: str, camera: str, recipe: str, timeout_s: float = 5.0) -> dict | None:
    """Make `recipe` judge the frames of `camera` that name no product (a worker's control
    endpoint); the worker's reply (`ok` false naming the recipes for an unknown one), or None."""
    return request(endpoint, encode_control("select", camera, recipe), timeout_s)


def request_reload(endpoint: str, timeout_s: float = 60.0) -> dict | None:
    """Ask a running worker (or a pool's broker) to switch to the store's active bank; its reply,
    or None if none answers (it loads the active bank when it starts)."""
    if control_request(endpoint, "status", PROBE_S) is None:
        return None
    started = time.monotonic()
    reply = control_request(endpoint, "reload", timeout_s)
    log.info("the station answered in %.1f s: %s", time.monotonic() - started, reply)
    return reply


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        station: str = "",
        topics: Sequence[str] = ("verdict", "mask", "heartbeat"),
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
        query_endpoint: str | None = None,
        query_timeout_s: float = 1.0,
    ) -> None:
        check_endpoint(endpoint)
        if query_endpoint is not None:
            check_endpoint(query_endpoint)
        self.context = context or zmq.Context.instance()
        # a CURVE station admits only clients on its allow-list
        self.socket = open_socket(
            self.context, zmq.SUB, endpoint, bind=False, max_message_bytes=REPLY_BYTES, curve=curve
        )
        for kind in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, subscription(kind, station))
        self.query_endpoint = query_endpoint
        self.query_timeout_s = query_timeout_s
        self.curve = curve
        self.position: dict[str, tuple[int, int]] = {}  # topic → (epoch, seq) of its last message
        self.delivered: deque[str] = deque(maxlen=REMEMBERED_FRAMES)
        self.delivered_set: set[str] = set()
        self.pending: deque[Event] = deque()
        self.lost = 0  # messages known lost (gaps), after what replays recovered
        self.losses: deque[Loss] = deque(maxlen=REMEMBERED_LOSSES)  # not yet taken (take_losses)
        self.unfetched: dict[str, tuple[int, int]] = {}  # topic → position a fetch must start from
        self.next_retry = 0.0
        self.restarts = 0  # publisher restarts seen (on any topic)
        self.epochs: set[int] = set()
        self.recovered = 0  # verdicts fetched from the publisher after a gap or restart
        self.duplicates = 0  # verdicts dropped because their frame was already delivered
        self.refused = ErrorTally("message from the station", log)  # by kind, each kind logged

    @property
    def malformed(self) -> int:
        """Messages from the station refused as malformed (live or in a replay answer)."""
        return sum(self.refused.values())

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)

    def _track(self, topic: str, epoch: int, seq: int) -> tuple[int, bool]:
        """(messages lost before this one, whether the publisher restarted since the last one)."""
        previous = self.position.get(topic)
        self.position[topic] = (epoch, seq)
        if epoch not in self.epochs:
            self.restarts += bool(self.epochs)  # each restart counted once, on whichever topic
            self.epochs.add(epoch)
        if previous is None:
            return 0, False
        if previous[0] != epoch:
            return 0, True
        return max(seq - previous[1] - 1, 0), False

    def receive(self, timeout_s: float) -> Event | None:
        """The next valid event, or None after `timeout_s` without one (malformed ones are counted)."""
        self.retry_fetches()
        while not self.pending and self.socket.poll(int(timeout_s * 1000)):
            self._decode(self.socket.recv_multipart())
        return self.pending.popleft() if self.pending else None

    def _decode(self, parts: list[bytes]) -> None:
        kind = bytes(parts[0]).split(b".", 1)[0]
        try:
            bytes(parts[0]).decode("ascii")
            if kind == b"verdict":
                self._verdict(decode_verdict(parts), bytes(parts[0]).decode())
            elif kind == b"mask":
                header, png = decode_mask(parts)
                self._other(bytes(parts[0]).decode(), header, png)
            elif kind == b"heartbeat":
                beat = decode_heartbeat(parts)
                self._other(bytes(parts[0]).decode(), beat)
            else:
                raise ProtocolError("topic", f"unknown topic {bytes(parts[0])[:32]!r}")
        except ProtocolError as error:
            self.refused.count(error)
        except UnicodeDecodeError:
            self.refused.count("topic", f"a topic that is not ASCII: {bytes(parts[0])[:32]!r}")

    def _other(self, topic: str, header: MaskHeader | Heartbeat, mask_png: bytes | None = None) -> None:
        gap, restart = self._track(topic, header.epoch, header.seq)
        if gap:
            self._lost(Loss(topic, header.epoch, header.seq - gap, header.seq - 1))
        event = Event(topic, header.seq, gap, header.epoch, restart, mask_png=mask_png)
        if isinstance(header, Heartbeat):
            event.heartbeat = header
        else:
            event.frame_id = header.frame_id
        self.pending.append(event)

    def _verdict(self, verdict: VerdictMessage, topic: str) -> None:
        previous = self.position.get(topic)
        gap, restart = self._track(topic, verdict.epoch, verdict.seq)
        if previous is not None and (gap or restart):
            lost_before = self.lost
            if self.query_endpoint is None:
                self._lost(Loss(topic, verdict.epoch, verdict.seq - gap, verdict.seq - 1))
            else:  # fetched and delivered first; what the station no longer holds is a Loss
                self._fetch(topic, previous, (verdict.epoch, verdict.seq))
            gap = self.lost - lost_before  # known lost; a fetch that is retried later tells its own
        if self._first(verdict.frame_id):
            self.pending.append(Event(topic, verdict.seq, gap, verdict.epoch, restart, verdict=verdict))

    def _lost(self, loss: Loss) -> None:
        self.lost += loss.count or 0
        self.losses.append(loss)

    def _first(self, frame_id: str) -> bool:
        if frame_id in self.delivered_set:
            self.duplicates += 1
            return False
        if len(self.delivered) == self.delivered.maxlen:
            self.delivered_set.discard(self.delivered[0])
        self.delivered.append(frame_id)
        self.delivered_set.add(frame_id)
        return True

    def _fetch(self, topic: str, start: tuple[int, int], before: tuple[int, int] | None) -> None:
        """Queue the verdicts of `topic` after position `start` (and before `before`), as the
        publisher still holds them, page by page, marked replayed; positions it no longer holds
        become Losses. Where the publisher stops answering, the fetch is retried from there later
        (`retry_fetches`), so a station that is down or answered garbage costs time, not verdicts."""
        camera = parse_topic(topic).camera
        position = start
        while True:
            page = self._page(camera, position)
            if page is None:  # from where this one got to (its losses so far are counted), or earlier
                self.unfetched[topic] = min(self.unfetched.get(topic, position), position)
                return
            done = not page.get("more")
            for gap in page.get("missing", []):
                loss = Loss(topic, gap["epoch"], gap["from_seq"], gap["to_seq"])
                if before is None or (loss.epoch, loss.from_seq) < before:
                    self._lost(loss)
            if page.get("known") is False and position == start and start[0]:
                self._lost(Loss(topic, start[0], start[1] + 1, None))  # the station kept no trace
            for missed in page["verdicts"]:
                if before is not None and (missed.epoch, missed.seq) >= before:
                    done = True
                    break
                if self._first(missed.frame_id):
                    self.pending.append(
                        Event(topic, missed.seq, 0, missed.epoch, replayed=True, verdict=missed)
                    )
                    self.recovered += 1
                position = (missed.epoch, missed.seq)
                if before is None and position > self.position.get(topic, (0, 0)):
                    self.position[topic] = position  # resuming: live verdicts continue after it
                    self.epochs.add(missed.epoch)
            if done or not page["verdicts"]:
                if self.unfetched.get(topic, start) >= start:  # an earlier unanswered start stays
                    self.unfetched.pop(topic, None)
                return

    def _page(self, camera: str, position: tuple[int, int]) -> dict | None:
        """One page of the publisher's replay answer, its verdicts decoded (None: no valid answer)."""
        assert self.query_endpoint is not None
        query = Query(camera, epoch=position[0], after_seq=position[1])
        try:
            reply = request(self.query_endpoint, encode_query(query), self.query_timeout_s, self.context,
                            shape=ReplayReply)  # fmt: skip
        except (ProtocolError, zmq.ZMQError) as exc:
            log.warning("could not fetch missed verdicts from %s: %s", self.query_endpoint, exc)
            return None
        if reply is None or not reply["ok"]:
            return None
        verdicts = []
        for body in reply["verdicts"]:
            try:
                missed = verdict_from_body(body) if isinstance(body, dict) else None
            except ProtocolError:
                missed = None
            if missed is None or missed.camera != camera or (missed.epoch, missed.seq) <= position:
                self.refused.count("replay", f"a replayed verdict that is not {camera}'s after {position}")
                continue
            verdicts.append(missed)
        return {**reply, "verdicts": verdicts}

    def retry_fetches(self) -> None:
        """Fetch again what the publisher did not answer for (every RETRY_S at most)."""
        now = time.monotonic()
        if not self.unfetched or now < self.next_retry:
            return
        self.next_retry = now + RETRY_S
        for topic in list(self.unfetched):
            self._fetch(topic, self.unfetched.pop(topic), None)

    def resume(self, positions: dict[str, tuple[int, int]]) -> None:
        """Continue where an earlier subscriber stopped (a bridge before its restart): `positions`
        maps verdict topics to the (epoch, seq) of the last verdict it handled. What the
        publisher sent since is fetched (with `query_endpoint`) and delivered first, marked
        replayed; a station that does not answer yet is asked again until it does."""
        for topic, (epoch, seq) in positions.items():
            try:
                kind, _, camera = parse_topic(topic)
            except ProtocolError:
                kind, camera = "", ""
            if kind != "verdict" or not is_name(camera):
                raise ValueError(f"{topic!r} is not a verdict topic")
            self.position[topic] = (epoch, seq)
            self.epochs.add(epoch)
            if self.query_endpoint is not None:
                self._fetch(topic, (epoch, seq), None)

    def take_losses(self) -> list[Loss]:
        """The losses found since the last call (bridges log, count and report each)."""
        losses = list(self.losses)
        self.losses.clear()
        return losses

    def events(self, timeout_s: float) -> Iterator[Event]:
        """Events until none arrives for `timeout_s`."""
        while (event := self.receive(timeout_s)) is not None:
            yield event
