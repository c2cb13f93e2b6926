"""A threshold per inspect region, chosen as the bank's is: each region's peak of the anomaly map on
held-out good frames, the threshold where the target share of them would be rejected, with the
expected rate and its 95 % bound, per region and for the part (a part is rejected when any region
is). A region judges fewer pixels than the whole frame, so its threshold is usually lower: what a
label or a fixture edge elsewhere in the frame would have forced on every region is not paid.

The thresholds hold for the regions they were calibrated on: the record keeps the recipe's digest
(its frame size, regions and registration), and a station whose regions changed since falls back
to the bank's threshold (edge/pipeline/judgement.py says so in its log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.calibration.threshold import choose_threshold, upper_bound
from edge.engine.model import PatchCore
from edge.engine.scoring import anomaly_map
from edge.errors import UsageError
from edge.pipeline.judgement import RecipeRegions, RegionError
from edge.pipeline.registration import RegistrationError
from edge.recipe import Recipe, recipe_digest


class RegionPeaks:
    """Held-out peaks per inspect region: the `patches` hook of `held_out_scores`."""

    def __init__(self, recipe: Recipe, images: Sequence[np.ndarray]) -> None:
        self.recipe = recipe
        self.regions = RecipeRegions(recipe, 1.0)
        self.names = [rule.name for rule in self.regions.rules]
        self.images = images
        self.peaks = np.full((len(images), len(self.names)), np.nan)
        self.unregistered = 0

    def __call__(self, index: int, grid: np.ndarray, bank: PatchCore) -> None:
        image = self.images[index]
        try:
            self.regions.check_frame(image.shape[:2])
        except RegionError as error:
            raise UsageError(f"recipe {self.recipe.name}: good frame {index}: {error}") from None
        placement = bank.placement(image.shape[:2])
        try:
            placed = self.regions.placed_for(image, placement)
        except RegistrationError:
            self.unregistered += 1  # not a peak: a frame the station would answer by its setting
            return
        amap = anomaly_map(grid, placement.input_hw)
        for column, (_, pixels) in enumerate(placed.inspect):
            if pixels.any():
                self.peaks[index, column] = float(amap[pixels].max())

    def choose(self, target_frr: float, margin: float, method: str) -> dict[str, Any] | None:
        """The record a bank version keeps: each region's choice and the part's rate; None when no
        frame was held out (a single frame is scored by its variants, not by region)."""
        if np.isnan(self.peaks).all() and not self.unregistered:
            return None
        chosen = {}
        over = np.zeros(len(self.images), bool)
        for column, name in enumerate(self.names):
            peaks = self.peaks[:, column]
            known = ~np.isnan(peaks)
            if not known.any():
                raise UsageError(f"recipe {self.recipe.name}: region {name} was judged on no good frame")
            choice = choose_threshold(peaks[known], target_frr, margin, method)
            chosen[name] = choice.to_dict()
            over |= np.nan_to_num(peaks, nan=-np.inf) > choice.threshold
        judged = int((~np.isnan(self.peaks).all(1)).sum())
        above = int(over.sum())
        return {
            "recipe": self.recipe.name,
            "digest": recipe_digest(self.recipe),
            "thresholds": chosen,
            "part": {
                "held_out": judged,
                "above": above,
                "expected_frr": above / max(judged, 1),
                "frr_upper_95": upper_bound(above, judged) if judged else 1.0,
                "unregistered": self.unregistered,
            },
        }
