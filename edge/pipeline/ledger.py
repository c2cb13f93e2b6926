"""Accounting for triggered frames: each one capture announced gets exactly one verdict.

Capture announces every triggered frame to the publisher (an `expect` message) as it sends it to
the worker. The first verdict for a frame is published; if none comes by the frame's deadline
(the worker died, hung or fell behind), the publisher answers TIMEOUT itself, and a verdict that
arrives after that is counted and dropped, so a PLC never sees two answers for one part.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from edge.protocol import FrameHeader

# answered frame ids kept to recognise late or duplicate verdicts: 16 minutes at 10 parts/s, far
# longer than any backlog a restarted worker works through, and about 1 MB of memory at most
REMEMBERED = 10_000


class Ledger:
    def __init__(self, default_deadline_ms: float = 5000.0, grace_ms: float = 250.0) -> None:
        self.default_deadline_ms = default_deadline_ms
        self.grace_ms = grace_ms
        self.outstanding: OrderedDict[str, tuple[FrameHeader, float]] = OrderedDict()
        self._answered: set[str] = set()
        self._answered_order: deque[str] = deque()
        self.late = 0  # verdicts that came after their frame had been answered

    def _remember(self, frame_id: str) -> None:
        self._answered.add(frame_id)
        self._answered_order.append(frame_id)
        if len(self._answered_order) > REMEMBERED:
            self._answered.discard(self._answered_order.popleft())

    def expect(self, header: FrameHeader, now_s: float) -> None:
        """A frame was sent; it is due `deadline_ms` (+ grace) from now, as the publisher's clock says."""
        if header.frame_id in self._answered or header.frame_id in self.outstanding:
            return  # its verdict overtook the announcement
        deadline_ms = header.deadline_ms or self.default_deadline_ms
        self.outstanding[header.frame_id] = (header, now_s + (deadline_ms + self.grace_ms) / 1000)

    def answer(self, frame_id: str) -> bool:
        """True if this verdict is the frame's first and must be published."""
        if frame_id in self._answered:
            self.late += 1
            return False
        self.outstanding.pop(frame_id, None)
        self._remember(frame_id)
        return True

    def overdue(self, now_s: float) -> list[FrameHeader]:
        """Frames whose deadline passed without a verdict; they count as answered from now on."""
        due = [frame_id for frame_id, (_, at) in self.outstanding.items() if at <= now_s]
        headers = [self.outstanding.pop(frame_id)[0] for frame_id in due]
        for header in headers:
            self._remember(header.frame_id)
        return headers
