"""Accounting for triggered frames: each one capture announced gets exactly one verdict.

Capture announces every triggered frame to the publisher (an `expect` message) as it sends it to
the worker. The first verdict for a frame is published; if none comes by the frame's deadline
(the worker died, hung or fell behind), the publisher answers TIMEOUT itself, and a verdict that
arrives after that is counted and dropped, so a PLC never sees two answers for one part.

The ledger survives a restart of the publisher: with a journal file, every announced part and every
answered triggered part is appended to it (one JSON line, written before the publisher moves on),
and a new publisher reads it back, so parts announced to the old one still get their verdict (or
TIMEOUT) and parts it answered are not answered again. A line torn by a kill is skipped. The
journal is rewritten (atomically) from what is still needed when it is opened and as it grows.
Appends are not fsynced: the journal survives the process, not a power cut.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.files import write_bytes_atomic
from edge.protocol import FrameHeader, ProtocolError, current_body, decode_expect, dump_json, encode_expect

log = logging.getLogger("edge.ledger")
# answered frame ids kept to recognise late or duplicate verdicts: 16 minutes at 10 parts/s, far
# longer than any backlog a restarted worker works through, and about 1 MB of memory at most
REMEMBERED = 10_000


class Journal:
    """The ledger's append-only file: `{"expect": header, "due_utc_s": t}` and `{"answered": id}`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self.handle: int | None = None

    def read(self) -> list[dict]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records, torn = [], 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                torn += 1
                continue
            records.append(record)
        if torn:
            log.warning(
                "journal %s: %d unreadable line(s) skipped (a write cut short by a kill)", self.path, torn
            )
        return records

    def rewrite(self, records: list[dict]) -> None:
        if self.handle is not None:
            os.close(self.handle)
        write_bytes_atomic(self.path, b"".join(dump_json(r) + b"\n" for r in records))
        self.handle = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.lines = len(records)

    def append(self, record: dict) -> None:
        assert self.handle is not None, "the journal was closed"
        os.write(self.handle, dump_json(record) + b"\n")
        self.lines += 1

    def close(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None


class Ledger:
    def __init__(
        self, default_deadline_ms: float = 5000.0, grace_ms: float = 250.0, journal: Path | None = None
    ) -> None:
        self.default_deadline_ms = default_deadline_ms
        self.grace_ms = grace_ms
        self._outstanding: OrderedDict[str, tuple[FrameHeader, float]] = OrderedDict()
        self._accepted: set[str] = set()  # verdicts taken and not yet published (held, in order)
        self._answered: set[str] = set()
        self._answered_order: deque[str] = deque()
        self.late = 0  # verdicts that came after their frame had been answered
        self.recovered = 0  # parts still unanswered in the journal of a previous publisher
        self.journal = Journal(journal) if journal is not None else None
        if self.journal is not None:
            try:
                self._recover()
            except OSError as exc:
                raise ConfigError(f"publisher journal {journal}: {exc.strerror or exc}") from None

    # ---- the journal ---------------------------------------------------------------------------
    def _recover(self) -> None:
        assert self.journal is not None
        now_s, now_utc = time.monotonic(), time.time()
        for record in self.journal.read():
            if isinstance(record.get("answered"), str):
                self._outstanding.pop(record["answered"], None)
                self._remember(record["answered"])
                continue
            try:
                header = decode_expect(encode_expect(FrameHeader(**current_body(record["expect"]))))
                due = float(record["due_utc_s"])
            except (KeyError, TypeError, ValueError, ProtocolError):
                continue
            if header.frame_id not in self._answered:
                self._outstanding[header.frame_id] = (header, now_s + (due - now_utc))
        self.recovered = len(self._outstanding)
        if self.recovered:
            log.warning("%d announced part(s) of a previous publisher await their verdict", self.recovered)
        self._compact()

    def _compact(self) -> None:
        now_s, now_utc = time.monotonic(), time.time()
        assert self.journal is not None
        records: list[dict[str, Any]] = [{"answered": frame_id} for frame_id in self._answered_order]
        records += [
            {"expect": asdict(header), "due_utc_s": now_utc + (at - now_s)}
            for header, at in self._outstanding.values()
        ]
        self.journal.rewrite(records)

    def _record(self, record: dict) -> None:
        if self.journal is None:
            return
        self.journal.append(record)
        if self.journal.lines > 3 * REMEMBERED:
            self._compact()

    # ---- accounting ----------------------------------------------------------------------------
    def _remember(self, frame_id: str) -> None:
        self._answered.add(frame_id)
        self._answered_order.append(frame_id)
        if len(self._answered_order) > REMEMBERED:
            self._answered.discard(self._answered_order.popleft())

    def expect(self, header: FrameHeader, now_s: float) -> None:
        """A frame was sent; it is due `deadline_ms` (+ grace) from now, as the publisher's clock says."""
        if header.frame_id in self._answered or header.frame_id in self._outstanding:
            return  # its verdict overtook the announcement, or it was announced twice
        deadline_ms = header.deadline_ms or self.default_deadline_ms
        due = now_s + (deadline_ms + self.grace_ms) / 1000
        self._outstanding[header.frame_id] = (header, due)
        self._record({"expect": asdict(header), "due_utc_s": time.time() + (due - now_s)})

    def answer(self, frame_id: str) -> bool:
        """True if this verdict is the frame's first and must be published (the caller publishes
        it, then calls `published`); a repeat, or one for an answered frame, is counted late."""
        if frame_id in self._answered or frame_id in self._accepted:
            self.late += 1
            return False
        self._accepted.add(frame_id)
        return True

    def published(self, frame_id: str, triggered: bool) -> None:
        """A verdict went out: the frame counts as answered (journaled for triggered parts)."""
        self._outstanding.pop(frame_id, None)
        self._accepted.discard(frame_id)
        self._remember(frame_id)
        if triggered:
            self._record({"answered": frame_id})

    def overdue(self, now_s: float) -> list[FrameHeader]:
        """Frames whose deadline passed without a verdict (the caller publishes their TIMEOUT); one
        whose verdict came and waits to be published is not overdue."""
        return [h for h, at in self._outstanding.values() if at <= now_s and h.frame_id not in self._accepted]

    def waiting_before(self, camera: str, capture_ns: int) -> bool:
        """An announced frame of `camera`, captured before `capture_ns`, has no verdict yet."""
        return any(
            header.camera == camera and header.capture_monotonic_ns < capture_ns
            and header.frame_id not in self._accepted
            for header, _ in self._outstanding.values()
        )  # fmt: skip

    def awaits(self, frame_id: str) -> bool:
        return frame_id in self._outstanding

    @property
    def awaited(self) -> int:
        """Announced parts without a verdict yet."""
        return len(self._outstanding)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
