"""Frames in, verdicts out: the worker's decision logic, free of sockets so it can be tested alone.

A frame becomes OK or NOK by comparing the engine's image score with the bank's threshold; the
mask is the anomaly map, laid back on the original frame, above that threshold. A frame that
cannot be inspected still gets a verdict: ERROR (malformed, unreadable) or TIMEOUT (its deadline
passed before it could be scored).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.engine.model import PatchCore, StageTimer
from edge.protocol import FrameHeader, ProtocolError, Verdict, VerdictMessage, decode_frame, verdict_for


@dataclass(frozen=True)
class Bank:
    """What a verdict needs besides the engine: the threshold and the bank's identity."""

    model: PatchCore
    threshold: float
    bank_id: str
    version: str
    backend: str = "torch-cpu"


@dataclass
class Inspected:
    verdict: VerdictMessage
    mask_png: bytes | None  # the thresholded mask in frame geometry, for OK/NOK frames


def _bank_fields(bank: Bank) -> dict:
    return {
        "threshold": bank.threshold,
        "bank_id": bank.bank_id,
        "bank_version": bank.version,
        "backend": bank.backend,
    }


def error_verdict(error: ProtocolError, station: str) -> VerdictMessage | None:
    """The ERROR verdict for a malformed frame, if it named a frame id; None otherwise. The camera
    is the header's when it named one validly."""
    if error.frame_id is None:
        return None
    return VerdictMessage(
        station=station,
        camera=error.camera or "unknown",
        frame_id=error.frame_id,
        verdict=Verdict.ERROR,
        capture_utc="",
        capture_monotonic_ns=0,
        error=f"malformed frame: {error}",
    )


def regions(mask: np.ndarray) -> tuple[int, list[list[int]]]:
    """Defect area in pixels and [x, y, width, height] boxes of the 8-connected regions."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [[int(v) for v in stats[i, :4]] for i in range(1, count)]
    return int(mask.sum()), boxes


def inspect(
    frames: list[tuple[FrameHeader, np.ndarray]], bank: Bank, now_ns: int | None = None
) -> list[Inspected]:
    """Score a micro-batch of decoded frames; one Inspected per frame, in order."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    outcomes: list[Inspected | None] = [None] * len(frames)
    live = []
    for position, (header, _pixels) in enumerate(frames):
        waited_ms = (now_ns - header.capture_monotonic_ns) / 1e6
        if header.deadline_ms is not None and waited_ms > header.deadline_ms:
            error = f"deadline {header.deadline_ms} ms passed after {waited_ms:.1f} ms"
            verdict = verdict_for(header, Verdict.TIMEOUT, error=error, **_bank_fields(bank))
            outcomes[position] = Inspected(verdict, None)
        else:
            live.append(position)
    if live:
        timer = StageTimer()
        started = time.perf_counter()
        results = bank.model.score([frames[p][1] for p in live], timer)
        per_frame = {stage: 1000 * seconds / len(live) for stage, seconds in timer.seconds.items()}
        per_frame["total"] = 1000 * (time.perf_counter() - started) / len(live)
        for position, result in zip(live, results, strict=True):
            header = frames[position][0]
            mask = result.frame_map() > bank.threshold
            area, boxes = regions(mask)
            verdict = verdict_for(
                header,
                Verdict.NOK if result.score > bank.threshold else Verdict.OK,
                **_bank_fields(bank),
                score=result.score,
                latency_ms=per_frame,
                defect_area_px=area,
                boxes=boxes,
            )
            ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
            outcomes[position] = Inspected(verdict, png.tobytes() if ok else None)
    return [o for o in outcomes if o is not None]


def decode_or_error(
    parts: list, station: str
) -> tuple[tuple[FrameHeader, np.ndarray] | None, VerdictMessage | None, str | None]:
    """(frame, None, None) for a valid frame; (None, ERROR verdict or None, error kind) otherwise."""
    try:
        return decode_frame(parts), None, None
    except ProtocolError as error:
        return None, error_verdict(error, station), error.kind
