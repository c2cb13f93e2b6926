"""Recent frames: a bounded on-disk ring of the frames behind recent verdicts, at full resolution.

The wire carries masks, not frames; an operator needs the frame under a mask to judge a reject,
and a reject cleared as good must go into the bank as the camera saw it. So a worker (opt-in,
`recent_frames` in the configuration) keeps the frames of its NOK parts, and a sample of OK parts,
here; edge-view serves them under the masks and copies a cleared one into the bank store.

    <root>/<camera>/<key>.png    the frame, lossless (8-bit, as it was scored)
    <root>/<camera>/<key>.json   its verdict (written last: an entry without it is incomplete)

`key` is a hash of camera and frame id, so a frame id (any printable text) never becomes a path.
The ring keeps at most `max_frames` entries and `max_bytes` bytes: the oldest go first. Every file
is written atomically; several pool workers may share one ring (each prunes what is over the bound).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic
from edge.protocol import is_name

log = logging.getLogger("edge.recent")


def frame_key(camera: str, frame_id: str) -> str:
    return hashlib.sha256(f"{camera}\0{frame_id}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class RecentFrame:
    camera: str
    key: str
    png: Path
    verdict: dict[str, Any]  # the verdict body (docs/protocol.md) the frame was given


class RecentFrames:
    def __init__(self, root: str | Path, max_frames: int = 500, max_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.max_frames, self.max_bytes = max_frames, max_bytes

    def _paths(self, camera: str, frame_id: str) -> tuple[Path, Path]:
        if not is_name(camera):
            raise ValueError(f"not a camera name: {camera!r}")
        base = self.root / camera / frame_key(camera, frame_id)
        return base.with_suffix(".png"), base.with_suffix(".json")

    def get(self, camera: str, frame_id: str) -> RecentFrame | None:
        """The frame of `frame_id`, if the ring still holds it complete."""
        if not is_name(camera):
            return None
        png, record = self._paths(camera, frame_id)
        try:
            verdict = json.loads(record.read_text())
        except (OSError, ValueError):
            return None
        if not png.is_file() or not isinstance(verdict, dict) or verdict.get("frame_id") != frame_id:
            return None
        return RecentFrame(camera, png.stem, png, verdict)

    def put(self, verdict: dict[str, Any], png: bytes) -> None:
        """Keep a frame (the PNG first, its verdict last), then drop the oldest over the bounds."""
        png_path, record_path = self._paths(verdict["camera"], verdict["frame_id"])
        write_bytes_atomic(png_path, png)
        write_bytes_atomic(record_path, json.dumps(verdict).encode())
        self.prune()

    def prune(self) -> None:
        entries = []
        for record in self.root.glob("*/*.json"):
            try:
                stat, png_size = record.stat(), record.with_suffix(".png").stat().st_size
            except FileNotFoundError:  # pruned by another worker meanwhile, or incomplete
                continue
            entries.append((stat.st_mtime_ns, record, stat.st_size + png_size))
        entries.sort(key=lambda entry: entry[0])
        total = sum(size for _, _, size in entries)
        while entries and (len(entries) > self.max_frames or total > self.max_bytes):
            _, record, size = entries.pop(0)
            record.unlink(missing_ok=True)  # the record first: the entry is incomplete from here
            record.with_suffix(".png").unlink(missing_ok=True)
            total -= size
        for orphan in self.root.glob("*/*.png"):  # a PNG whose verdict was never written
            if not orphan.with_suffix(".json").exists() and _older_than(orphan, 60):
                orphan.unlink(missing_ok=True)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False
