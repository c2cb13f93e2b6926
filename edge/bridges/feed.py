"""Where a bridge stopped: the position of the last verdict passed on, per topic, so that a
restarted bridge resumes there.

A bridge passes verdicts on to something that acknowledges them (an MQTT broker's PUBACK, an OPC UA
address space once written). `Positions` keeps, per verdict topic, the (epoch, seq) of the last
verdict acknowledged downstream with every earlier one, in a small JSON file written atomically;
a restarted bridge hands it to `Subscriber.resume`, which fetches what the station published
meanwhile through its replay query. A verdict is therefore delivered at least once across bridge
restarts, and the frame id lets a consumer drop the rare repeat.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edge.files import write_bytes_atomic
from edge.protocol import VerdictMessage, topic

log = logging.getLogger("edge.bridge")


def verdict_topic_of(verdict: VerdictMessage) -> str:
    return topic("verdict", verdict.station, verdict.camera).decode()


@dataclass
class _Outstanding:
    epoch: int
    seq: int
    acknowledged: bool = False


@dataclass
class Positions:
    """Per verdict topic, the last verdict acknowledged downstream together with all before it.

    `sent` records a verdict handed downstream, `acknowledged` its acknowledgement; the saved
    position only moves past a verdict once it and every verdict sent before it on that topic are
    acknowledged, so a bridge killed with verdicts in flight sends them again after its restart.
    """

    path: Path | None
    saved: dict[str, tuple[int, int]] = field(default_factory=dict)
    outstanding: dict[str, deque[_Outstanding]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> Positions:
        """The positions saved at `path`; none (a fresh start) when it is absent or unreadable."""
        positions = cls(path)
        if path is None or not path.exists():
            return positions
        try:
            raw = json.loads(path.read_text())
            positions.saved = {
                str(topic): (int(epoch), int(seq)) for topic, (epoch, seq) in raw["positions"].items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "ignoring the unreadable position file %s (%s): starting from live verdicts", path, exc
            )
        return positions

    def sent(self, verdict: VerdictMessage) -> None:
        """A verdict handed downstream (a repeat of one still outstanding changes nothing)."""
        topic = verdict_topic_of(verdict)
        self.outstanding.setdefault(topic, deque()).append(_Outstanding(verdict.epoch, verdict.seq))

    def acknowledged(self, verdict: VerdictMessage) -> None:
        topic = verdict_topic_of(verdict)
        queue = self.outstanding.get(topic, deque())
        for entry in queue:
            if (entry.epoch, entry.seq) == (verdict.epoch, verdict.seq):
                entry.acknowledged = True
                break
        moved = None
        while queue and queue[0].acknowledged:
            entry = queue.popleft()
            moved = (entry.epoch, entry.seq)
        if moved is not None:
            self.saved[topic] = moved
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        body = {"positions": {topic: list(position) for topic, position in sorted(self.saved.items())}}
        try:
            write_bytes_atomic(self.path, json.dumps(body).encode())
        except OSError as exc:  # a full disk costs resumption after a restart, not the bridge
            log.error("could not save positions to %s: %s", self.path, exc)
