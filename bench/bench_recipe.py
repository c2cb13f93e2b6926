"""Recipes measured: what regions, a minimum defect size and ignored patches do, printed as tables.

    python -m edge.eval.variants $EDGE_DATA_ROOT/mvtec bottle /tmp/variants --variant labels
    python bench/bench_recipe.py labels /tmp/variants/bottle-labels
    python bench/bench_recipe.py min-size $EDGE_DATA_ROOT/mvtec bottle screw
    python bench/bench_recipe.py min-size $EDGE_DATA_ROOT/kolektorsdd commutator
    python bench/bench_recipe.py speed $EDGE_DATA_ROOT/mvtec bottle --runs 3

Every threshold is calibrated as edge-calibrate calibrates one (the default engine, held-out
k-fold scores of the good training frames, a 1 % target false-reject rate, `choose_threshold`),
on what the recipe judges: the anomaly map's peak over the whole frame, or over the pixels its
regions inspect. Then, on the test frames: the false-reject rate (good frames rejected), the
detection rate (defective frames rejected) and the image AUROC of that peak.

- `labels`: a `labels` variant (good parts carry a code that differs on every part) judged without
  regions and with the variant's label region ignored; defective frames split by whether most of
  the defect lies outside the label.
- `min-size`: the whole frame judged, a defect rejecting only from a size on (frame pixels).
- `speed`: a frame judged whole against its left half ignored: search and end-to-end ms per frame
  (the median of --runs passes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.calibration.threshold import choose_threshold, folds_for
from edge.engine.config import EngineConfig
from edge.engine.model import ImageResult, PatchCore, StageTimer
from edge.eval.metrics import image_auroc
from edge.eval.mvtec import Category, load_category
from edge.imageio import read_image
from edge.memory import tune_allocator
from edge.pipeline.judgement import RecipeRegions, judge, whole_frame_defects
from edge.recipe import Recipe, Region, rect_corners

TARGET_FRR = 0.01
FOLDS = 5
MIN_SIZES = (0, 16, 64, 256, 1024)


@dataclass
class Scored:
    results: list[ImageResult]
    labels: list[int]
    masks: list[np.ndarray]


def held_out(frames: list[np.ndarray], config: EngineConfig) -> list[ImageResult]:
    """Each good training frame scored by a bank fitted on the other folds (edge-calibrate's folds)."""
    results: list[ImageResult | None] = [None] * len(frames)
    for held in folds_for(len(frames), FOLDS, config.seed):
        kept = np.setdiff1d(np.arange(len(frames)), held)
        model = PatchCore.fit([frames[i] for i in kept], config)
        for index, result in zip(held, model.score([frames[i] for i in held]), strict=True):
            results[index] = result
    return [r for r in results if r is not None]


def fitted(category: Category) -> tuple[PatchCore, list[ImageResult], Scored]:
    config = EngineConfig()
    train = [read_image(p) for p in category.train]
    print(f"{category.name}: {len(train)} good training frames, {len(category.test)} test frames", flush=True)
    calibration = held_out(train, config)
    model = PatchCore.fit(train, config)
    images = [read_image(s.path) for s in category.test]
    test = Scored(
        model.score(images),
        [s.label for s in category.test],
        [s.mask(i.shape[:2]) for s, i in zip(category.test, images, strict=True)],
    )
    return model, calibration, test


def rates(rejected: list[bool], labels: list[int]) -> tuple[float, float]:
    good = [r for r, label in zip(rejected, labels, strict=True) if label == 0]
    bad = [r for r, label in zip(rejected, labels, strict=True) if label == 1]
    return float(np.mean(good)), float(np.mean(bad))


def whole_peak(result: ImageResult) -> float:
    return float(result.anomaly_map.max())


def labels_table(root: Path) -> None:
    facts = json.loads((root / "labels.json").read_text())
    width, height = facts["frame"]
    box = tuple(facts["label_region"])
    category = load_category(root.parent, root.name)
    _, calibration, test = fitted(category)
    label = Region("label", "ignore", rect_corners(*box), box)
    recipe = Recipe("labelled", (height, width), (label,))
    print(f"label region (ignored): {list(box)} in {width}x{height} frames")
    outside = []
    for mask, flag in zip(test.masks, test.labels, strict=True):
        inside = mask[box[1] : box[1] + box[3], box[0] : box[0] + box[2]].sum()
        outside.append(flag == 1 and inside < 0.5 * max(mask.sum(), 1))
    print(f"{'judged':<22} {'threshold':>9} {'held-out FRR':>12} {'FRR':>6} {'detect':>7} {'outside':>8} "
          f"{'inside':>7} {'AUROC':>6}")  # fmt: skip
    for name, regions in (("whole frame", None), ("label ignored", recipe)):
        if regions is None:
            held = [whole_peak(r) for r in calibration]
        else:
            held = [_region_peak(r, regions) for r in calibration]
        choice = choose_threshold(np.array(held), TARGET_FRR, 0.0, "k-fold")
        rejected, peaks = [], []
        for result in test.results:
            if regions is None:
                peaks.append(whole_peak(result))
                rejected.append(peaks[-1] > choice.threshold)
            else:
                placed = RecipeRegions(regions, choice.threshold).placed(result.placement)
                verdict = judge(result.anomaly_map, placed, result.placement, None)
                peaks.append(verdict.score)
                rejected.append(verdict.nok)
        frr, detected = rates(rejected, test.labels)
        out = np.mean([r for r, o in zip(rejected, outside, strict=True) if o])
        ins = np.mean([r for r, o, f in zip(rejected, outside, test.labels, strict=True) if f == 1 and not o])
        auroc = image_auroc(np.array(test.labels), np.array(peaks))
        held_frr = choice.expected_frr
        print(f"{name:<22} {choice.threshold:>9.3f} {held_frr:>12.3f} {frr:>6.3f} {detected:>7.3f} "
              f"{out:>8.3f} {ins:>7.3f} {auroc:>6.3f}", flush=True)  # fmt: skip
    print(f"defective frames: {sum(outside)} with the defect mostly outside the label, "
          f"{sum(test.labels) - sum(outside)} mostly under it")  # fmt: skip


def _region_peak(result: ImageResult, recipe: Recipe) -> float:
    placed = RecipeRegions(recipe, 1.0).placed(result.placement)
    return float(result.anomaly_map[placed.judged].max())


def min_size_table(root: Path, names: list[str]) -> None:
    print(
        f"{'category':<12} {'min px':>7} {'FRR':>6} {'detect':>7}   (threshold: held-out k-fold, 1 % target)"
    )
    for name in names:
        _, calibration, test = fitted(load_category(root, name))
        choice = choose_threshold(np.array([whole_peak(r) for r in calibration]), TARGET_FRR, 0.0, "k-fold")
        largest = []
        for result in test.results:
            defects = whole_frame_defects(result.anomaly_map, choice.threshold, result.placement, None)
            largest.append(max((d["area_px"] for d in defects), default=0))
        for least in MIN_SIZES:
            rejected = [area >= max(least, 1) for area in largest]
            frr, detected = rates(rejected, test.labels)
            print(f"{name:<12} {least:>7} {frr:>6.3f} {detected:>7.3f}", flush=True)


def speed_table(root: Path, name: str, runs: int) -> None:
    category = load_category(root, name)
    model = PatchCore.fit([read_image(p) for p in category.train], EngineConfig())
    images = [read_image(s.path) for s in category.test][:48]
    input_hw = model.placement(images[0].shape[:2]).input_hw
    half = np.zeros(input_hw, bool)
    half[:, input_hw[1] // 2 :] = True  # the right half judged, the left half ignored
    model.score(images[:2])
    print(
        f"{name}: {len(images)} frames, batch {model.config.batch_size}; ms per frame, median of {runs} runs"
    )
    print(f"{'judged':<18} {'search':>8} {'end to end':>11}")
    for label, judged in (("whole frame", None), ("left half ignored", [half] * len(images))):
        search, total = [], []
        for _ in range(runs):
            timer = StageTimer()
            started = time.perf_counter()
            model.score(images, timer, judged)
            total.append((time.perf_counter() - started) * 1000 / len(images))
            search.append(timer.seconds["search"] * 1000 / len(images))
        print(f"{label:<18} {statistics.median(search):>8.2f} {statistics.median(total):>11.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    labels = sub.add_parser("labels", help="a labels variant: without regions, and with the label ignored")
    labels.add_argument("category", type=Path, help="the variant's category folder")
    sizes = sub.add_parser("min-size", help="false-reject and detection rates against the minimum size")
    sizes.add_argument("root", type=Path)
    sizes.add_argument("categories", nargs="+")
    speed = sub.add_parser("speed", help="half the frame ignored against none")
    speed.add_argument("root", type=Path)
    speed.add_argument("category")
    speed.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tune_allocator()
    if args.what == "labels":
        labels_table(args.category)
    elif args.what == "min-size":
        min_size_table(args.root, args.categories)
    else:
        speed_table(args.root, args.category, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
