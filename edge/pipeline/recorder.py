"""The worker's side of the recent-frames ring (`edge/recent.py`): which frames to keep, and
keeping them off the scoring path. A verdict's frame is copied when it is chosen and written (PNG,
atomic) by a thread of its own from a queue of QUEUE_FRAMES; a frame chosen while that queue is
full is not kept, and counted (`skipped`): the worker never waits for the disk. A frame the ring
could not write (full disk, permissions) is counted too, and the line goes on: the ring serves the
operator's page, never a verdict."""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import ImageError
from edge.imageio import encode_png, to_uint8
from edge.protocol import Verdict, VerdictMessage, verdict_body
from edge.recent import RecentFrames

log = logging.getLogger("edge.worker")
QUEUE_FRAMES = 16
# zlib level 1, measured on the 2-core VM: a 500 x 1250 greyscale frame in 23 ms (47 % of its raw
# size), a 5 MP colour frame in 0.34 s (17 %); the writer keeps up with that many rejects a second
PNG_LEVEL = 1


@dataclass
class RecorderCounters:
    kept: int = 0
    skipped: int = 0  # chosen, but the queue was full
    failed: Counter = field(default_factory=Counter)  # by reason, when the ring could not write


class FrameRecorder:
    def __init__(self, ring: RecentFrames, ok_every: int = 0) -> None:
        self.ring, self.ok_every = ring, ok_every
        self.counters = RecorderCounters()
        self.ok_seen: Counter = Counter()  # per camera
        self.queue: queue.Queue[tuple[dict[str, Any], np.ndarray] | None] = queue.Queue(QUEUE_FRAMES)
        self.thread = threading.Thread(target=self._write, name="recent-frames", daemon=True)
        self.thread.start()

    def wanted(self, verdict: VerdictMessage) -> bool:
        """Every NOK part; every `ok_every`-th OK part of each camera (0: none)."""
        if verdict.verdict == Verdict.NOK:
            return True
        if verdict.verdict != Verdict.OK or not self.ok_every:
            return False
        self.ok_seen[verdict.camera] += 1
        return self.ok_seen[verdict.camera] % self.ok_every == 0

    def offer(self, verdict: VerdictMessage, pixels: np.ndarray) -> None:
        if not self.wanted(verdict):
            return
        image = to_uint8(pixels)  # uint16: a new array already
        try:
            self.queue.put_nowait((verdict_body(verdict), image.copy() if image is pixels else image))
        except queue.Full:
            self.counters.skipped += 1

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            body, image = item
            try:
                self.ring.put(body, encode_png(image, PNG_LEVEL))
                self.counters.kept += 1
            except (OSError, ImageError) as exc:
                errno = getattr(exc, "errno", None)
                reason = type(exc).__name__ if errno is None else f"errno {errno}"
                if not self.counters.failed[reason]:
                    log.error("recent frames: cannot keep frame %s in %s: %s", body["frame_id"],
                              self.ring.root, exc)  # fmt: skip
                self.counters.failed[reason] += 1

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self.thread.join()
