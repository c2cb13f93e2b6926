"""The verdicts a subscriber can fetch after missing them: every published verdict, kept on the
station's disk for `keep_s` (an hour by default), across publisher restarts.

A bridge or an MES that was away asks for what a camera's topic carried after the last verdict it
handled, (epoch, seq); the answer comes in pages bounded in bytes (each one a normal-sized reply),
in publishing order across epochs, and names exactly which positions are no longer kept
(`Missing`), so a subscriber counts what it lost instead of guessing. SQLite (WAL) holds the rows:
a verdict is written before it is published, so a publisher killed between the two loses nothing
a subscriber could ask for. Without a path the store lives in memory (tests, a publisher started
by hand), with the same rules.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.protocol import current_body

log = logging.getLogger("edge.replay")
PRUNE_EVERY_S = 10.0
RANGE_BYTES = 64  # what one Missing range costs in a reply, at most
KEEP_EPOCHS = 100_000  # (camera, publisher start) pairs whose last seq is remembered, rows or not

SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    camera TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    published REAL NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (camera, epoch, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS verdicts_by_age ON verdicts (published);
CREATE TABLE IF NOT EXISTS epochs (
    camera TEXT NOT NULL, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (camera, epoch)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Missing:
    """Positions `from_seq`..`to_seq` (inclusive) of `epoch` were published and are no longer kept."""

    epoch: int
    from_seq: int
    to_seq: int

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1

    def wire(self) -> dict[str, int]:
        return {"epoch": self.epoch, "from_seq": self.from_seq, "to_seq": self.to_seq}


@dataclass
class Page:
    verdicts: list[dict] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    more: bool = False  # the page is full: ask again after its last verdict
    known: bool = True  # False: the asked epoch is unknown here, so what it lacks cannot be counted


class ReplayStore:
    def __init__(self, path: Path | None, keep_s: float) -> None:
        self.path = path
        self.keep_s = keep_s
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # one thread at a time uses it (the publisher is created in one thread and may run in another)
        target = str(path) if path is not None else ":memory:"
        self.db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        if path is not None:
            self.db.execute("PRAGMA journal_mode=WAL")
            # a killed process loses nothing; a power cut, at most the last commits
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.next_prune = 0.0
        self.failed = 0  # verdicts that could not be kept (published all the same)

    def add(self, camera: str, epoch: int, seq: int, body: dict) -> None:
        """Keep one verdict (before it is published). A store that cannot write (a full disk)
        costs the replay of that verdict, logged and counted, never its publication."""
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
                (camera, epoch, seq, time.time(), json.dumps(body, separators=(",", ":"))),
            )
            self.db.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (camera, epoch, seq))
            self.prune()
        except sqlite3.Error as exc:
            self.failed += 1
            if self.failed % 1000 == 1:
                log.error("could not keep verdicts for replay in %s (%s): %d so far",
                          self.path, exc, self.failed)  # fmt: skip

    def latest(self, camera: str) -> dict | None:
        row = self.db.execute(
            "SELECT body FROM verdicts WHERE camera = ? ORDER BY epoch DESC, seq DESC LIMIT 1", (camera,)
        ).fetchone()
        return current_body(json.loads(row[0])) if row else None

    def prune(self, now: float | None = None) -> int:
        """Forget verdicts older than keep_s (every PRUNE_EVERY_S at most); how many went."""
        now = time.time() if now is None else now
        if now < self.next_prune:
            return 0
        self.next_prune = now + PRUNE_EVERY_S
        gone = self.db.execute("DELETE FROM verdicts WHERE published < ?", (now - self.keep_s,)).rowcount
        self.db.execute(
            "DELETE FROM epochs WHERE (camera, epoch) IN "
            "(SELECT camera, epoch FROM epochs ORDER BY epoch DESC LIMIT -1 OFFSET ?)",
            (KEEP_EPOCHS,),
        )
        return gone

    def page(self, camera: str, epoch: int, after_seq: int, max_bytes: int) -> Page:
        """What `camera`'s topic carried after (epoch, after_seq), in publishing order, as many
        verdicts as fit in `max_bytes` of JSON. Epoch 0 asks for everything kept."""
        epochs = dict(
            self.db.execute(
                "SELECT epoch, last_seq FROM epochs WHERE camera = ? AND epoch >= ? ORDER BY epoch",
                (camera, epoch),
            ).fetchall()
        )
        page = Page(known=epoch == 0 or epoch in epochs)
        rows = self.db.execute(
            "SELECT epoch, seq, body FROM verdicts"
            " WHERE camera = ? AND (epoch > ? OR (epoch = ? AND seq > ?)) ORDER BY epoch, seq",
            (camera, epoch, epoch, after_seq),
        )
        position = (epoch, after_seq)
        size = 0
        for row_epoch, row_seq, body in rows:
            # from the start of what is kept (epoch 0), nothing before the first row counts as lost
            gaps = _between(position, (row_epoch, row_seq), epochs) if epoch else []
            cost = len(body) + 1 + RANGE_BYTES * len(gaps)
            if size + cost > max_bytes and page.verdicts:
                page.more = True
                break
            page.missing += gaps
            page.verdicts.append(current_body(json.loads(body)))
            size += cost
            position = (row_epoch, row_seq)
        else:
            if epoch:
                page.missing += _between(position, None, epochs)
        return page

    def close(self) -> None:
        self.db.close()


def _between(start: tuple[int, int], end: tuple[int, int] | None, epochs: dict[int, int]) -> list[Missing]:
    """The positions published strictly between `start` and `end` (None: everything after), as
    ranges per epoch, from each epoch's last sequence number."""
    ranges = []
    for epoch, last in sorted(epochs.items()):
        if epoch < start[0] or (end is not None and epoch > end[0]):
            continue
        first = start[1] + 1 if epoch == start[0] else 1
        stop = end[1] - 1 if end is not None and epoch == end[0] else last
        if stop >= first:
            ranges.append(Missing(epoch, first, stop))
    return ranges


def missing_total(ranges: Iterable[Missing]) -> int:
    return sum(r.count for r in ranges)
