"""A recipe's regions and rules applied to an anomaly map: which defects a frame has, and why.

Regions are drawn once per frame size in the frame's pixels, then carried into the network input's
geometry (where the map is), so the work per frame scales with the network input, not the frame.
A defect is an 8-connected blob of map pixels over its region's threshold inside an inspect region,
at least the region's minimum size (in frame pixels, or mm² with the camera's scale); pixels of an
ignore region are never judged, and patches that cannot reach a judged pixel are not searched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache

import cv2
import numpy as np

from edge.engine.geometry import Placement, box_to_frame, mask_to_input
from edge.errors import EdgeError
from edge.imageio import read_image
from edge.pipeline.registration import Motion, Registrar
from edge.protocol import MAX_DEFECTS, Defect
from edge.recipe import Recipe, Region, aspect_fits, frame_mask, read_mask, region_problems

WHOLE_FRAME = "frame"  # the region a defect lies in when the recipe draws no inspect region


class RegionError(EdgeError):
    """A frame the recipe's regions do not fit (another frame size); answered ERROR."""


@dataclass(frozen=True)
class RegionRule:
    name: str
    threshold: float
    min_area_px: int
    min_area_mm2: float | None


@dataclass(frozen=True)
class PlacedRegions:
    """The regions in one placement's network-input geometry."""

    judged: np.ndarray  # bool: pixels some inspect region judges
    inspect: tuple[tuple[RegionRule, np.ndarray], ...]  # each inspect region's pixels, ignores removed
    frame_px_per_input_px: float
    bank_threshold: float


class RecipeRegions:
    """A recipe's regions with their rules (thresholds resolved against the bank's)."""

    def __init__(
        self, recipe: Recipe, bank_threshold: float, calibrated: dict[str, float] | None = None
    ) -> None:
        """`calibrated`: thresholds per inspect region chosen by edge-calibrate for these regions;
        a region's own `threshold` beats it, and its `sensitivity` divides it."""
        problems = region_problems(recipe)
        if problems:
            raise RegionError("; ".join(problems))
        assert recipe.frame_hw is not None
        self.frame_hw = recipe.frame_hw
        self.scales = recipe.scales
        self.bank_threshold = bank_threshold
        self.ignore = [r for r in recipe.regions if r.mode == "ignore"]
        inspect = [r for r in recipe.regions if r.mode == "inspect"]
        calibrated = calibrated or {}
        self.rules = [self._rule(r, calibrated.get(r.name, bank_threshold)) for r in inspect] or [
            RegionRule(WHOLE_FRAME, bank_threshold, 0, None)
        ]
        self.shapes: list[Region | None] = list(inspect) or [None]
        self.masks = {r.name: read_mask(r.mask) for r in recipe.regions if r.mask is not None}
        self._placed = cache(self._place)
        self.registration = recipe.registration
        self.registrar = None
        if recipe.registration is not None:
            reference = read_image(recipe.registration.reference)
            self.registrar = Registrar(
                reference, recipe.registration.max_turn_deg, recipe.registration.min_confidence
            )

    @staticmethod
    def _rule(region: Region, base: float) -> RegionRule:
        threshold = region.threshold or base / (region.sensitivity or 1.0)
        return RegionRule(region.name, threshold, region.min_area_px, region.min_area_mm2)

    def check_frame(self, frame_hw: tuple[int, int]) -> None:
        if frame_hw == self.frame_hw or (self.scales and aspect_fits(frame_hw, self.frame_hw)):
            return
        drawn = f"{self.frame_hw[1]}x{self.frame_hw[0]}"
        raise RegionError(
            f"the recipe's regions are drawn for {drawn} frames, this frame is {frame_hw[1]}x{frame_hw[0]}"
            + (f" (fit: scale takes frames of nearly the shape of {drawn})" if self.scales else "")
        )

    def placed(self, placement: Placement) -> PlacedRegions:
        return self._placed(placement)

    def placed_for(self, image: np.ndarray, placement: Placement) -> PlacedRegions:
        """The regions where they lie in this frame: moved with the part when the recipe registers
        (RegistrationError when it cannot), else as drawn."""
        if self.registrar is None:
            return self.placed(placement)
        return self._place(placement, self.registrar.register(image))

    def _drawn(self, region: Region, motion: Motion | None, frame_hw: tuple[int, int]) -> np.ndarray:
        """The region's pixels in a frame of `frame_hw` (scaled from the drawn size where the
        recipe scales), moved by `motion` where the recipe registers (always the drawn size)."""
        if region.mask is not None:  # read once, with the recipe
            drawn = self.masks[region.name]
            if motion is not None:
                height, width = self.frame_hw
                return cv2.warpAffine(drawn, motion.matrix, (width, height), flags=cv2.INTER_NEAREST)
            if frame_hw != self.frame_hw:
                return cv2.resize(drawn, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST)
            return drawn
        if motion is None:
            return frame_mask(region, frame_hw, self.frame_hw)
        mask = np.zeros(self.frame_hw, np.uint8)
        cv2.fillPoly(mask, [np.round(motion.apply(region.corners)).astype(np.int32)], 1)
        return mask

    def _place(self, placement: Placement, motion: Motion | None = None) -> PlacedRegions:
        frame_hw = placement.frame_hw
        ignored = np.zeros(frame_hw, np.uint8)
        for region in self.ignore:
            ignored |= self._drawn(region, motion, frame_hw)
        kept = 1 - ignored
        inspect = []
        for rule, shape in zip(self.rules, self.shapes, strict=True):
            drawn = kept if shape is None else self._drawn(shape, motion, frame_hw) & kept
            inspect.append((rule, mask_to_input(drawn, placement).astype(bool)))
        judged = np.logical_or.reduce([mask for _, mask in inspect])
        return PlacedRegions(judged, tuple(inspect), placement.frame_px_per_input_px, self.bank_threshold)


@dataclass
class Judgement:
    nok: bool
    score: float  # the strongest region's peak over its threshold, in the bank threshold's units
    mask: np.ndarray  # bool, input geometry: pixels over their region's threshold
    defects: list[dict]  # Defect objects, strongest first


def judge(
    anomaly_map: np.ndarray, regions: PlacedRegions, placement: Placement, mm_per_px: float | None
) -> Judgement:
    """The defects of one frame's map under the recipe's rules: NOK when any inspect region holds
    a blob over its threshold of at least its minimum size."""
    mask = np.zeros(anomaly_map.shape, bool)
    found: list[tuple[float, Defect]] = []
    strongest = 0.0
    for rule, pixels in regions.inspect:
        if pixels.any():
            peak = float(anomaly_map[pixels].max())
            strongest = max(strongest, peak / rule.threshold)
        over = (anomaly_map > rule.threshold) & pixels
        if not over.any():
            continue
        mask |= over
        found += _blobs(anomaly_map, over, rule, regions.frame_px_per_input_px, placement, mm_per_px)
    found.sort(key=lambda item: -item[0])
    defects = [asdict(defect) for _, defect in found[:MAX_DEFECTS]]
    return Judgement(bool(defects), strongest * regions.bank_threshold, mask, defects)


def whole_frame_defects(
    anomaly_map: np.ndarray, threshold: float, placement: Placement, mm_per_px: float | None
) -> list[dict]:
    """A recipe without regions: every blob over the threshold, strongest first (its verdict stays
    the image score's, as before recipes had regions)."""
    rule = RegionRule(WHOLE_FRAME, threshold, 0, None)
    over = anomaly_map > threshold
    found = _blobs(anomaly_map, over, rule, placement.frame_px_per_input_px, placement, mm_per_px)
    found.sort(key=lambda item: -item[0])
    return [asdict(defect) for _, defect in found[:MAX_DEFECTS]]


def _blobs(
    anomaly_map: np.ndarray,
    over: np.ndarray,
    rule: RegionRule,
    frame_px_per_input_px: float,
    placement: Placement,
    mm_per_px: float | None,
) -> list[tuple[float, Defect]]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(over.astype(np.uint8), connectivity=8)
    least = rule.min_area_px
    if rule.min_area_mm2 is not None and mm_per_px is not None:
        least = max(least, math.ceil(rule.min_area_mm2 / mm_per_px**2))
    blobs = []
    for label in range(1, count):
        area = round(int(stats[label, cv2.CC_STAT_AREA]) * frame_px_per_input_px)
        if area < max(least, 1):
            continue
        x, y, w, h = (int(v) for v in stats[label, :4])
        window = anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label]
        peak = float(window.max())
        defect = Defect(
            region=rule.name,
            area_px=area,
            box=box_to_frame([x, y, w, h], placement),
            peak=peak,
            threshold=rule.threshold,
            area_mm2=None if mm_per_px is None else round(area * mm_per_px**2, 4),
        )
        blobs.append((peak / rule.threshold, defect))
    return blobs
