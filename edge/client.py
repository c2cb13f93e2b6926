"""A subscriber library for PLC bridges and MES clients: verdicts and masks, with gap detection.

with Subscriber("tcp://station:5556", station="line1") as subscriber:
    for event in subscriber.events(timeout_s=5):
        ...  # event.verdict (VerdictMessage) or event.mask_png, event.gap (messages lost before it)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import zmq

from edge.protocol import ProtocolError, VerdictMessage, decode_verdict
from edge.security import CurveClient


@dataclass
class Event:
    topic: str
    seq: int
    gap: int  # messages on this topic lost just before this one (PUB/SUB drops under load)
    verdict: VerdictMessage | None = None
    mask_png: bytes | None = None
    frame_id: str | None = None  # for masks: the frame whose verdict came just before
    heartbeat: dict | None = None


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        station: str = "",
        topics: tuple[str, ...] = ("verdict", "mask", "heartbeat"),
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # a station with CURVE admits only clients on its allow-list
            curve.secure(self.socket)
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, f"{topic}.{station}".encode())
        self.socket.connect(endpoint)
        self.last_seq: dict[str, int] = {}
        self.lost = 0
        self.malformed = 0

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.socket.close()

    def _gap(self, topic: str, seq: int) -> int:
        previous = self.last_seq.get(topic)
        self.last_seq[topic] = seq
        gap = 0 if previous is None else max(seq - previous - 1, 0)
        self.lost += gap
        return gap

    def receive(self, timeout_s: float) -> Event | None:
        """The next valid event, or None after `timeout_s` without one (malformed ones are counted)."""
        while self.socket.poll(int(timeout_s * 1000)):
            event = self._decode(self.socket.recv_multipart())
            if event is not None:
                return event
            self.malformed += 1
        return None

    def _decode(self, parts: list[bytes]) -> Event | None:
        topic = parts[0].decode(errors="replace")
        try:
            if topic.startswith("verdict."):
                verdict = decode_verdict(parts)
                return Event(topic, verdict.seq, self._gap(topic, verdict.seq), verdict=verdict)
            header = json.loads(parts[1])
            seq = int(header["seq"])
        except (ProtocolError, ValueError, KeyError, TypeError, IndexError):
            return None
        if topic.startswith("mask.") and len(parts) == 3:
            return Event(
                topic, seq, self._gap(topic, seq), mask_png=parts[2], frame_id=str(header.get("frame_id"))
            )
        return Event(topic, seq, self._gap(topic, seq), heartbeat=header)

    def events(self, timeout_s: float) -> Iterator[Event]:
        """Events until none arrives for `timeout_s`."""
        while (event := self.receive(timeout_s)) is not None:
            yield event


def control_request(endpoint: str, command: str, timeout_s: float) -> dict | None:
    """One request to a worker's control endpoint ("status" or "reload"); its JSON answer, or None
    if none came within `timeout_s` (no worker, or one still starting)."""
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(json.dumps({"command": command}).encode())
        if not socket.poll(int(timeout_s * 1000)):
            return None
        return json.loads(socket.recv())
    finally:
        socket.close(linger=0)
        context.term()
