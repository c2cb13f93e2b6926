"""Frames in, verdicts out: the worker's decision logic, free of sockets so it can be tested alone.

A frame is judged by the recipe its header's product names (no product: the station's first
recipe; an unknown one: ERROR). A recipe without regions makes a frame OK or NOK by comparing the
engine's image score with the bank's threshold; the mask is the anomaly map, laid back on the
original frame, above that threshold, and a NOK names its blobs as defects. A recipe with regions
judges each inspect region by its own rule (edge/pipeline/judgement.py). A frame that cannot be
inspected still gets a verdict: ERROR (malformed, refused, failed to score, regions drawn for
another size) or TIMEOUT (its deadline passed before it could be scored). uint16 frames are scored
by their top byte (`value >> 8`: MSB-aligned Mono12/Mono16), as capture converts them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np

from edge.engine.geometry import Placement, box_to_frame, mask_to_frame
from edge.engine.model import ImageResult, PatchCore, StageTimer
from edge.errors import EdgeError
from edge.imageio import to_uint8
from edge.pipeline.judgement import PlacedRegions, RecipeRegions, judge, whole_frame_defects
from edge.pipeline.registration import RegistrationError
from edge.protocol import (
    MAX_BOXES,
    FrameHeader,
    ProtocolError,
    Verdict,
    VerdictMessage,
    decode_frame,
    verdict_for,
)
from edge.recipe import DEFAULT_RECIPE


@dataclass(frozen=True)
class Bank:
    """One recipe, loaded: its model, threshold, bank identity and regions (None: the whole frame)."""

    model: PatchCore
    threshold: float
    bank_id: str
    version: str
    backend: str = "torch-cpu"
    recipe: str = DEFAULT_RECIPE
    regions: RecipeRegions | None = None


class RecipeBook:
    """The station's recipes, all loaded (a changeover between parts costs no load): a frame's
    product picks one, no product the first. `mm_per_px`: each camera's scale, for areas in mm²."""

    def __init__(self, banks: list[Bank], mm_per_px: dict[str, float] | None = None) -> None:
        self.banks = {bank.recipe: bank for bank in banks}
        self.default = banks[0]
        self.mm_per_px = mm_per_px or {}
        self.selected: dict[str, str] = {}  # camera → the recipe for its frames that name no product

    def get(self, product: str | None, camera: str | None = None) -> Bank | None:
        """The recipe a frame names; else its camera's selected one; else the first."""
        if product is not None:
            return self.banks.get(product)
        selected = self.selected.get(camera or "")
        return self.default if selected is None else self.banks.get(selected, self.default)

    @classmethod
    def of(cls, recipes: RecipeBook | Bank) -> RecipeBook:
        """A book as it is, or a single bank as the book of one recipe."""
        return recipes if isinstance(recipes, RecipeBook) else cls([recipes])

    def unknown(self, product: str) -> str:
        return f"unknown recipe {product!r}: this station's recipes are {', '.join(self.banks)}"


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
        "recipe": bank.recipe,
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
        reason="malformed",
    )


def regions(mask: np.ndarray, placement: Placement | None = None) -> list[list[int]]:
    """[x, y, width, height] boxes of the 8-connected regions of a boolean mask, the largest
    MAX_BOXES of them; mapped to frame pixels when the mask is in input geometry (`placement`)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:MAX_BOXES]
    boxes = [[int(v) for v in stats[i, :4]] for i in sorted(order)]
    return boxes if placement is None else [box_to_frame(box, placement) for box in boxes]


FAILURE_REASONS = {"shape": "frame", "registration": "registration"}  # a failure's kind → its reason


def _failed(header: FrameHeader, bank: Bank, kind: str, reason: str) -> Inspected:
    why = FAILURE_REASONS.get(kind, "inspection")
    verdict = verdict_for(header, Verdict.ERROR, error=reason, reason=why, **_bank_fields(bank))
    return Inspected(verdict, None, kind)


def _verdict(
    header: FrameHeader,
    result: ImageResult,
    bank: Bank,
    latency: dict,
    mm_per_px: float | None,
    placed: PlacedRegions | None,
) -> Inspected:
    """OK/NOK with the mask and the defects, built from the input-geometry map: host work and
    memory scale with the network input, not with the frame (one uint8 frame-sized mask for the PNG)."""
    if not math.isfinite(result.score):
        return _failed(header, bank, "score", f"score is not finite ({result.score})")
    if placed is None:
        mask = result.anomaly_map > bank.threshold
        nok, score = result.score > bank.threshold, float(result.score)
        defects = []
        if nok:
            defects = whole_frame_defects(result.anomaly_map, bank.threshold, result.placement, mm_per_px)
    else:
        judgement = judge(result.anomaly_map, placed, result.placement, mm_per_px)
        mask, nok, score, defects = judgement.mask, judgement.nok, judgement.score, judgement.defects
    frame_mask = mask_to_frame(mask, result.placement)
    ok, png = cv2.imencode(".png", frame_mask)
    verdict = verdict_for(
        header,
        Verdict.NOK if nok else Verdict.OK,
        **_bank_fields(bank),
        score=score,
        latency_ms=latency,
        defect_area_px=int(cv2.countNonZero(frame_mask)),
        boxes=regions(mask, result.placement),
        defects=defects,
        region=defects[0]["region"] if defects else None,
        reason="defect" if nok else None,
        has_mask=ok,
    )
    return Inspected(verdict, png.tobytes() if ok else None)


def _score(
    bank: Bank, pixels: list[np.ndarray], timer: StageTimer, judged: Sequence[np.ndarray | None]
) -> list[ImageResult] | Exception:
    try:
        if bank.regions is None:
            return bank.model.score(pixels, timer)
        return bank.model.score(pixels, timer, judged)
    except Exception as exc:  # one bad frame must not cost the others in its batch their verdicts
        return exc


def inspect(
    frames: list[tuple[FrameHeader, np.ndarray]], recipes: RecipeBook | Bank, now_ns: int | None = None
) -> list[Inspected]:
    """Score a micro-batch of decoded frames; one Inspected per frame, in order, whatever happens:
    each frame by its product's recipe (ERROR for a recipe the station does not have), a frame past
    its deadline is TIMEOUT, a frame the model refuses or cannot score is ERROR, and a batch that
    fails is retried frame by frame, so only the frame at fault loses its score."""
    book = RecipeBook.of(recipes)
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    outcomes: list[Inspected | None] = [None] * len(frames)
    groups: dict[str, list[int]] = {}
    for position, (header, _) in enumerate(frames):
        bank = book.get(header.product, header.camera)
        if bank is None:
            assert header.product is not None
            why = book.unknown(header.product)
            verdict = verdict_for(header, Verdict.ERROR, error=why, recipe=header.product, reason="recipe")
            outcomes[position] = Inspected(verdict, None, "recipe")
        else:
            groups.setdefault(bank.recipe, []).append(position)
    for name, positions in groups.items():
        judged = _inspect_with([frames[p] for p in positions], book, book.banks[name], now_ns)
        for position, inspected in zip(positions, judged, strict=True):
            outcomes[position] = inspected
    return [o for o in outcomes if o is not None]


def _inspect_with(
    frames: list[tuple[FrameHeader, np.ndarray]], book: RecipeBook, bank: Bank, now_ns: int
) -> list[Inspected]:
    """`inspect` for frames of one recipe."""
    outcomes: list[Inspected | None] = [None] * len(frames)
    live, pixels = [], []
    placed: list[PlacedRegions | None] = []
    for position, (header, image) in enumerate(frames):
        waited_ms = (now_ns - header.capture_monotonic_ns) / 1e6
        if header.deadline_ms is not None and waited_ms > header.deadline_ms:
            error = f"deadline {header.deadline_ms} ms passed after {waited_ms:.1f} ms"
            verdict = verdict_for(
                header, Verdict.TIMEOUT, error=error, reason="deadline", **_bank_fields(bank)
            )
            outcomes[position] = Inspected(verdict, None)
            continue
        try:
            placement = bank.model.placement((header.height, header.width))
            frame = to_uint8(image)
            regions = None
            if bank.regions is not None:
                bank.regions.check_frame((header.height, header.width))
                regions = bank.regions.placed_for(frame, placement)
        except RegistrationError as error:
            outcomes[position] = _unregistered(header, bank, str(error))
            continue
        except Exception as error:  # refused by the model's geometry, or worse: this frame only
            kind = "shape" if isinstance(error, EdgeError) else "inspect"
            outcomes[position] = _failed(header, bank, kind, f"frame refused: {_why(error)}")
            continue
        pixels.append(frame)
        placed.append(regions)
        live.append(position)
    if live:
        masks = [None if p is None else p.judged for p in placed]
        timer = StageTimer(bank.model.device)  # synchronised readings on a GPU
        started = time.perf_counter()
        together = _score(bank, pixels, timer, masks)
        results: list[ImageResult | Exception] = []
        if isinstance(together, Exception):  # one at a time: only the bad frame fails
            alone = [_score(bank, [p], timer, [m]) for p, m in zip(pixels, masks, strict=True)]
            results = [r if isinstance(r, Exception) else r[0] for r in alone]
        else:
            results = list(together)
        per_frame = {stage: 1000 * seconds / len(live) for stage, seconds in timer.seconds.items()}
        per_frame["total"] = 1000 * (time.perf_counter() - started) / len(live)
        for position, result, regions in zip(live, results, placed, strict=True):
            header = frames[position][0]
            if isinstance(result, Exception):
                outcomes[position] = _failed(header, bank, "inspect", f"inspection failed: {_why(result)}")
            else:
                scale = book.mm_per_px.get(header.camera)
                outcomes[position] = _verdict(header, result, bank, per_frame, scale, regions)
    return [o for o in outcomes if o is not None]


def _unregistered(header: FrameHeader, bank: Bank, why: str) -> Inspected:
    """A frame its recipe cannot register: ERROR, or NOK where the recipe says so; never judged."""
    assert bank.regions is not None and bank.regions.registration is not None
    if bank.regions.registration.on_failure == "nok":
        verdict = verdict_for(header, Verdict.NOK, error=why, reason="registration", **_bank_fields(bank))
        return Inspected(verdict, None, "registration")
    return _failed(header, bank, "registration", why)


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
