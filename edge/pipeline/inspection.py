"""Frames in, verdicts out: the worker's decision logic, free of sockets so it can be tested alone.

A frame becomes OK or NOK by comparing the engine's image score with the bank's threshold; the
mask is the anomaly map, laid back on the original frame, above that threshold. A frame that
cannot be inspected still gets a verdict: ERROR (malformed, refused, failed to score) or TIMEOUT
(its deadline passed before it could be scored). uint16 frames are scored by their top byte
(`value >> 8`: MSB-aligned Mono12/Mono16), as capture converts them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np

from edge.engine.geometry import Placement, box_to_frame, mask_to_frame
from edge.engine.model import ImageResult, PatchCore, StageTimer
from edge.errors import EdgeError
from edge.imageio import to_uint8
from edge.protocol import (
    MAX_BOXES,
    FrameHeader,
    ProtocolError,
    Verdict,
    VerdictMessage,
    decode_frame,
    verdict_for,
)


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
    failure: str | None = None  # the error kind when this frame could not be scored (ERROR verdict)


def _bank_fields(bank: Bank) -> dict:
    return {
        "threshold": bank.threshold,
        "bank_id": bank.bank_id,
        "bank_version": bank.version,
        "backend": bank.backend,
    }


def error_verdict(error: ProtocolError, station: str) -> VerdictMessage | None:
    """The ERROR verdict for a malformed frame, if it named a frame id; None otherwise. The camera
    is the header's when it named one validly; the capture time is the worker's receipt time, since
    the header's own cannot be trusted."""
    if error.frame_id is None:
        return None
    return VerdictMessage(
        station=station,
        camera=error.camera or "unknown",
        frame_id=error.frame_id,
        verdict=Verdict.ERROR,
        capture_utc=datetime.now(UTC).isoformat(),
        capture_monotonic_ns=time.monotonic_ns(),
        error=f"malformed frame: {error}",
    )


def regions(mask: np.ndarray, placement: Placement | None = None) -> list[list[int]]:
    """[x, y, width, height] boxes of the 8-connected regions of a boolean mask, the largest
    MAX_BOXES of them; mapped to frame pixels when the mask is in input geometry (`placement`)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:MAX_BOXES]
    boxes = [[int(v) for v in stats[i, :4]] for i in sorted(order)]
    return boxes if placement is None else [box_to_frame(box, placement) for box in boxes]


def _failed(header: FrameHeader, bank: Bank, kind: str, reason: str) -> Inspected:
    verdict = verdict_for(header, Verdict.ERROR, error=reason, **_bank_fields(bank))
    return Inspected(verdict, None, kind)


def _verdict(header: FrameHeader, result: ImageResult, bank: Bank, latency: dict) -> Inspected:
    """OK/NOK with the mask, built from the input-geometry map: host work and memory scale with
    the network input, not with the frame (one uint8 frame-sized mask for the PNG)."""
    if not math.isfinite(result.score):
        return _failed(header, bank, "score", f"score is not finite ({result.score})")
    mask = result.anomaly_map > bank.threshold
    frame_mask = mask_to_frame(mask, result.placement)
    ok, png = cv2.imencode(".png", frame_mask)
    verdict = verdict_for(
        header,
        Verdict.NOK if result.score > bank.threshold else Verdict.OK,
        **_bank_fields(bank),
        score=float(result.score),
        latency_ms=latency,
        defect_area_px=int(cv2.countNonZero(frame_mask)),
        boxes=regions(mask, result.placement),
        has_mask=ok,
    )
    return Inspected(verdict, png.tobytes() if ok else None)


def _score(bank: Bank, pixels: list[np.ndarray], timer: StageTimer) -> list[ImageResult] | Exception:
    try:
        return bank.model.score(pixels, timer)
    except Exception as exc:  # one bad frame must not cost the others in its batch their verdicts
        return exc


def inspect(
    frames: list[tuple[FrameHeader, np.ndarray]], bank: Bank, now_ns: int | None = None
) -> list[Inspected]:
    """Score a micro-batch of decoded frames; one Inspected per frame, in order, whatever happens:
    a frame past its deadline is TIMEOUT, a frame the model refuses or cannot score is ERROR, and
    a batch that fails is retried frame by frame, so only the frame at fault loses its score."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    outcomes: list[Inspected | None] = [None] * len(frames)
    live, pixels = [], []
    for position, (header, image) in enumerate(frames):
        waited_ms = (now_ns - header.capture_monotonic_ns) / 1e6
        if header.deadline_ms is not None and waited_ms > header.deadline_ms:
            error = f"deadline {header.deadline_ms} ms passed after {waited_ms:.1f} ms"
            verdict = verdict_for(header, Verdict.TIMEOUT, error=error, **_bank_fields(bank))
            outcomes[position] = Inspected(verdict, None)
            continue
        try:
            bank.model.placement((header.height, header.width))
            pixels.append(to_uint8(image))
        except Exception as error:  # refused by the model's geometry, or worse: this frame only
            kind = "shape" if isinstance(error, EdgeError) else "inspect"
            outcomes[position] = _failed(header, bank, kind, f"frame refused: {_why(error)}")
            continue
        live.append(position)
    if live:
        timer = StageTimer(bank.model.device)  # synchronised readings on a GPU
        started = time.perf_counter()
        together = _score(bank, pixels, timer)
        results: list[ImageResult | Exception] = []
        if isinstance(together, Exception):  # one at a time: only the bad frame fails
            alone = [_score(bank, [p], timer) for p in pixels]
            results = [r if isinstance(r, Exception) else r[0] for r in alone]
        else:
            results = list(together)
        per_frame = {stage: 1000 * seconds / len(live) for stage, seconds in timer.seconds.items()}
        per_frame["total"] = 1000 * (time.perf_counter() - started) / len(live)
        for position, result in zip(live, results, strict=True):
            header = frames[position][0]
            if isinstance(result, Exception):
                outcomes[position] = _failed(header, bank, "inspect", f"inspection failed: {_why(result)}")
            else:
                outcomes[position] = _verdict(header, result, bank, per_frame)
    return [o for o in outcomes if o is not None]


def _why(error: Exception) -> str:
    return str(error) if isinstance(error, EdgeError) else f"{type(error).__name__}: {error}"[:500]


def decode_or_error(
    parts: list, station: str
) -> tuple[tuple[FrameHeader, np.ndarray] | None, VerdictMessage | None, ProtocolError | None]:
    """(frame, None, None) for a valid frame; (None, ERROR verdict or None, the error) otherwise."""
    try:
        return decode_frame(parts), None, None
    except ProtocolError as error:
        return None, error_verdict(error, station), error
