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

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic
from edge.protocol import is_name

RESCAN_EVERY = 64  # a writer scans the folder (all writers' entries) every this many frames
ORPHAN_NS = 60 * 10**9  # a PNG whose record was never written (a crash between the two) goes then


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
        self._index: list[tuple[int, Path, int]] | None = None  # see _scan
        self._puts_since_scan = 0

    def _paths(self, camera: str, frame_id: str) -> tuple[Path, Path]:
        if not is_name(camera):
            raise ValueError(f"not a camera name: {camera!r}")
        base = self.root / camera / frame_key(camera, frame_id)
        return base.with_suffix(".png"), base.with_suffix(".json")

    def get(self, camera: str, frame_id: str) -> RecentFrame | None:
        """The frame of `frame_id`, if the ring still holds it complete."""
        if not is_name(camera):
            return None
        frame = _complete(self._paths(camera, frame_id)[1])
        return frame if frame is not None and frame.verdict.get("frame_id") == frame_id else None

    def newest(self, limit: int, keep: Callable[[dict[str, Any]], bool]) -> list[RecentFrame]:
        """Up to `limit` complete entries whose verdict `keep` accepts, newest first (every camera)."""
        found = []
        for _, record, _ in reversed(self._scan()):
            frame = _complete(record)
            if frame is not None and keep(frame.verdict):
                found.append(frame)
                if len(found) == limit:
                    break
        return found

    def put(self, verdict: dict[str, Any], png: bytes) -> None:
        """Keep a frame (the PNG first, its verdict last), then drop the oldest over the bounds."""
        png_path, record_path = self._paths(verdict["camera"], verdict["frame_id"])
        record = json.dumps(verdict).encode()
        write_bytes_atomic(png_path, png)
        write_bytes_atomic(record_path, record)
        if self._index is None or self._puts_since_scan >= RESCAN_EVERY:
            self.prune()
        else:  # between scans, this writer's own entries (other workers' are found by the next scan)
            self._index.append((time.time_ns(), record_path, len(png) + len(record)))
            self._puts_since_scan += 1
            self._drop_oldest()

    def prune(self) -> None:
        """Scan the folder (every writer's entries), then drop the oldest over the bounds."""
        self._index, self._puts_since_scan = self._scan(), 0
        self._drop_oldest()

    def _scan(self) -> list[tuple[int, Path, int]]:
        """(modification time of the record, record path, bytes of both files), oldest first; a PNG
        left without its record by a crash is deleted once it is a minute old."""
        sizes: dict[Path, int] = {}
        records: dict[Path, int] = {}
        orphaned_before = time.time_ns() - ORPHAN_NS
        for folder in _entries(self.root):
            for entry in _entries(Path(folder.path)):
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # removed by another worker meanwhile
                    continue
                base = Path(entry.path).with_suffix("")
                sizes[base] = sizes.get(base, 0) + stat.st_size
                if entry.name.endswith(".json"):
                    records[base] = stat.st_mtime_ns
                elif entry.name.endswith(".png") and stat.st_mtime_ns < orphaned_before:
                    records.setdefault(base, -1)  # -1: an orphan, unless its record turns up
        for base, mtime in list(records.items()):
            if mtime == -1:
                with contextlib.suppress(OSError):  # a reader without write access leaves it
                    base.with_suffix(".png").unlink(missing_ok=True)
                del records[base]
        return sorted((mtime, base.with_suffix(".json"), sizes[base]) for base, mtime in records.items())

    def _drop_oldest(self) -> None:
        assert self._index is not None
        total = sum(size for _, _, size in self._index)
        while self._index and (len(self._index) > self.max_frames or total > self.max_bytes):
            _, record, size = self._index.pop(0)
            record.unlink(missing_ok=True)  # the record first: the entry is incomplete from here
            record.with_suffix(".png").unlink(missing_ok=True)
            total -= size


def _complete(record: Path) -> RecentFrame | None:
    """The entry whose verdict is `record`, if its record reads and its PNG is there."""
    try:
        verdict = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    png = record.with_suffix(".png")
    if not isinstance(verdict, dict) or not png.is_file():
        return None
    return RecentFrame(record.parent.name, png.stem, png, verdict)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
