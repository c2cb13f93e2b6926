"""Good frames from a running capture process, and the worker told to take the new bank.

At cold start there is no bank, so no worker: edge-calibrate binds the frames endpoint in the
worker's place and receives what the station's capture process sends (free run, or one frame per
triggered part). A stopped line must not fill the collection: near-duplicates are dropped as they
arrive and do not count towards the frames asked for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
import zmq

from edge.calibration.quality import DuplicateFilter, FrameStats
from edge.errors import ConfigError, UsageError
from edge.imageio import to_uint8
from edge.protocol import ProtocolError, decode_frame
from edge.sockets import FRAME_BYTES, open_socket

log = logging.getLogger("edge.calibrate")


def collect_frames(
    endpoint: str, count: int, silence_s: float, progress: Callable[[int, Counter], None] | None = None
) -> tuple[list[np.ndarray], Counter]:
    """`count` distinct frames from capture (those skipped counted by reason)."""
    context = zmq.Context()
    try:
        socket = open_socket(context, zmq.PULL, endpoint, bind=True, max_message_bytes=FRAME_BYTES)
    except zmq.ZMQError as exc:
        context.destroy(linger=0)
        raise ConfigError(
            f"endpoints.frames: cannot bind {endpoint} ({exc}); a worker still holds it: stop edge-worker "
            "while calibrating from the live line"
        ) from None
    frames: list[np.ndarray] = []
    skipped: Counter = Counter()
    duplicates = DuplicateFilter()
    try:
        while len(frames) < count:
            if not socket.poll(int(silence_s * 1000)):
                raise UsageError(
                    f"no frame from capture for {silence_s:.0f} s after {len(frames)} of {count}: is "
                    "edge-capture running (and the line moving)?"
                )
            try:
                _, pixels = decode_frame(socket.recv_multipart())
            except ProtocolError as error:
                skipped[f"malformed_{error.kind}"] += 1
                continue
            if duplicates.seen(FrameStats.of(pixels)):
                skipped["near_duplicate"] += 1
            else:
                frames.append(to_uint8(np.array(pixels)))
            if progress is not None:
                progress(len(frames), skipped)
    finally:
        socket.close(linger=0)
        context.term()
    return frames, skipped
