"""Recipes measured: what regions, a minimum defect size and ignored patches do, printed as tables.

    python -m edge.eval.variants $EDGE_DATA_ROOT/mvtec bottle /tmp/variants --variant labels
    python bench/bench_recipe.py labels /tmp/variants/bottle-labels
    python -m edge.eval.variants $EDGE_DATA_ROOT/mvtec bottle /tmp/variants --variant labels-moving
    python bench/bench_recipe.py labels /tmp/variants/bottle-labels-moving
    python bench/bench_recipe.py min-size $EDGE_DATA_ROOT/mvtec bottle screw
    python bench/bench_recipe.py min-size $EDGE_DATA_ROOT/kolektorsdd commutator
    python bench/bench_recipe.py speed $EDGE_DATA_ROOT/mvtec bottle --runs 3
    python bench/bench_recipe.py registration /tmp/variants/bottle-labels-moving --runs 3

Every threshold is calibrated as edge-calibrate calibrates one (the default engine, held-out
k-fold scores of the good training frames, a 1 % target false-reject rate, `choose_threshold`),
on what the recipe judges: the anomaly map's peak over the whole frame, or over the pixels its
regions inspect. Then, on the test frames: the false-reject rate (good frames rejected), the
detection rate (defective frames rejected) and the image AUROC of that peak.

- `labels`: a `labels` or `labels-moving` variant (good parts carry a code that differs on every
  part) judged without regions and with the label ignored: for `labels-moving` (the label moves and
  turns with the part) the whole area the label can take ignored, against the label's own
  rectangle ignored on frames registered against the variant's reference (a frame that cannot be
  registered is answered ERROR: rejected); defective frames split by whether most of the defect
  lies outside the area the label can take.
- `min-size`: the whole frame judged, a defect rejecting only from a size on (frame pixels).
- `speed`: a frame judged whole against its left half ignored: search and end-to-end ms per frame
  (the median of --runs passes).
- `registration`: registering every test frame of a `labels-moving` set against its reference:
  ms per frame (the median of --runs passes), frames not registered, ECC's confidence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
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
from edge.pipeline.registration import Registrar, RegistrationError
from edge.recipe import Recipe, Region, Registration, rect_corners

TARGET_FRR = 0.01
FOLDS = 5
MIN_SIZES = (0, 16, 64, 256, 1024)


@dataclass
class Scored:
    results: list[ImageResult]
    images: list[np.ndarray]
    labels: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def held_out(frames: list[np.ndarray], config: EngineConfig) -> list[ImageResult]:
    """Each good training frame scored by a bank fitted on the other folds (edge-calibrate's folds)."""
    results: list[ImageResult | None] = [None] * len(frames)
    for held in folds_for(len(frames), FOLDS, config.seed):
        kept = np.setdiff1d(np.arange(len(frames)), held)
        model = PatchCore.fit([frames[i] for i in kept], config)
        for index, result in zip(held, model.score([frames[i] for i in held]), strict=True):
            results[index] = result
    return [r for r in results if r is not None]


def fitted(category: Category) -> tuple[PatchCore, Scored, Scored]:
    """The default model on the good training frames, those frames' held-out results, and the
    test frames' results."""
    config = EngineConfig()
    train = [read_image(p) for p in category.train]
    print(f"{category.name}: {len(train)} good training frames, {len(category.test)} test frames", flush=True)
    calibration = Scored(held_out(train, config), train)
    model = PatchCore.fit(train, config)
    images = [read_image(s.path) for s in category.test]
    test = Scored(
        model.score(images),
        images,
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


def grown(rect: list[int], margin: int, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """A rectangle grown by `margin` pixels on every side, inside the frame."""
    x, y, w, h = rect
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(frame_hw[1], x + w + margin), min(frame_hw[0], y + h + margin)
    return x0, y0, x1 - x0, y1 - y0


def labels_table(root: Path, margin: int) -> None:
    facts = json.loads((root / "labels.json").read_text())
    width, height = facts["frame"]
    frame_hw = (height, width)
    box = grown(facts["label_region"], margin, frame_hw)
    swept = grown(facts.get("swept_region", facts["label_region"]), margin, frame_hw)
    category = load_category(root.parent, root.name)
    _, calibration, test = fitted(category)

    def ignoring(rect: tuple, registration: Registration | None = None) -> Recipe:
        return Recipe(
            "labelled", frame_hw, (Region("label", "ignore", rect_corners(*rect), rect),), registration
        )

    runs: list[tuple[str, Recipe | None]] = [("whole frame", None)]
    if "swept_region" in facts:
        registered = Registration(str(root / "reference.png"), facts["max_turn_deg"] + 3, 0.7, "error")
        runs += [
            ("swept area ignored", ignoring(swept)),
            ("label ignored, registered", ignoring(box, registered)),
        ]
    else:
        runs += [("label ignored", ignoring(box))]
    print(f"label region {list(box)}, the area it can take {list(swept)} (each grown by {margin} px), "
          f"in {width}x{height} frames")  # fmt: skip
    outside = []
    for mask, flag in zip(test.masks, test.labels, strict=True):
        inside = mask[swept[1] : swept[1] + swept[3], swept[0] : swept[0] + swept[2]].sum()
        outside.append(flag == 1 and inside < 0.5 * max(mask.sum(), 1))
    print(f"{'judged':<26} {'threshold':>9} {'held-out FRR':>12} {'FRR':>6} {'detect':>7} {'outside':>8} "
          f"{'inside':>7} {'AUROC':>6} {'unregistered':>12}")  # fmt: skip
    for name, recipe in runs:
        drawn = None if recipe is None else RecipeRegions(recipe, 1.0)  # the peaks need no threshold
        pairs = zip(calibration.results, calibration.images, strict=True)
        held = [_peak(result, image, drawn) for result, image in pairs]
        choice = choose_threshold(np.array([h for h in held if h is not None]), TARGET_FRR, 0.0, "k-fold")
        regions = None if recipe is None else RecipeRegions(recipe, choice.threshold)
        rejected, peaks, unregistered = [], [], 0
        for result, image in zip(test.results, test.images, strict=True):
            if regions is None:
                peaks.append(whole_peak(result))
                rejected.append(peaks[-1] > choice.threshold)
                continue
            try:
                placed = regions.placed_for(image, result.placement)
            except RegistrationError:  # answered ERROR: the part is rejected
                unregistered += 1
                peaks.append(float("inf"))
                rejected.append(True)
                continue
            verdict = judge(result.anomaly_map, placed, result.placement, None)
            peaks.append(verdict.score)
            rejected.append(verdict.nok)
        frr, detected = rates(rejected, test.labels)
        out = np.mean([r for r, o in zip(rejected, outside, strict=True) if o])
        ins = np.mean([r for r, o, f in zip(rejected, outside, test.labels, strict=True) if f == 1 and not o])
        auroc = image_auroc(np.array(test.labels), np.nan_to_num(np.array(peaks), posinf=1e9))
        held_frr = choice.expected_frr
        print(f"{name:<26} {choice.threshold:>9.3f} {held_frr:>12.3f} {frr:>6.3f} {detected:>7.3f} "
              f"{out:>8.3f} {ins:>7.3f} {auroc:>6.3f} {unregistered:>12}", flush=True)  # fmt: skip
    print(f"defective frames: {sum(outside)} with the defect mostly outside the area the label can take, "
          f"{sum(test.labels) - sum(outside)} mostly in it")  # fmt: skip


def _peak(result: ImageResult, image: np.ndarray, regions: RecipeRegions | None) -> float | None:
    """The map's peak over what the regions judge (None: a frame they cannot register)."""
    if regions is None:
        return whole_peak(result)
    try:
        placed = regions.placed_for(image, result.placement)
    except RegistrationError:
        return None
    return float(result.anomaly_map[placed.judged].max())


def min_size_table(root: Path, names: list[str]) -> None:
    print(
        f"{'category':<12} {'min px':>7} {'FRR':>6} {'detect':>7}   (threshold: held-out k-fold, 1 % target)"
    )
    for name in names:
        _, calibration, test = fitted(load_category(root, name))
        held = [whole_peak(r) for r in calibration.results]
        choice = choose_threshold(np.array(held), TARGET_FRR, 0.0, "k-fold")
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


def registration_table(root: Path, runs: int) -> None:
    facts = json.loads((root / "labels.json").read_text())
    registrar = Registrar(read_image(root / "reference.png"), facts["max_turn_deg"] + 3, 0.7)
    frames = [read_image(p) for p in sorted((root / "test").glob("*/*.png"))]
    registrar.register(frames[0])  # first-call set-up
    times, confidences, failed = [], [], 0
    for run in range(runs):
        started = time.perf_counter()
        for frame in frames:
            try:
                motion = registrar.register(frame)
            except RegistrationError:
                failed += run == 0
                continue
            if run == 0:
                confidences.append(motion.confidence)
        times.append((time.perf_counter() - started) * 1000 / len(frames))
    print(f"{len(frames)} frames of {root.name}; ms per frame, median of {runs} runs")
    print(f"{'ms/frame':>9} {'not registered':>15} {'confidence min':>15} {'median':>7}")
    print(f"{statistics.median(times):>9.2f} {failed:>15} {min(confidences):>15.3f} "
          f"{statistics.median(confidences):>7.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    labels = sub.add_parser("labels", help="a labels variant: without regions, and with the label ignored")
    labels.add_argument("category", type=Path, help="the variant's category folder")
    labels.add_argument(
        "--margin",
        type=int,
        default=8,
        help="pixels the ignored rectangles are grown by (the map's smoothing)",
    )
    sizes = sub.add_parser("min-size", help="false-reject and detection rates against the minimum size")
    sizes.add_argument("root", type=Path)
    sizes.add_argument("categories", nargs="+")
    registering = sub.add_parser("registration", help="registration's cost per frame on a labels-moving set")
    registering.add_argument("category", type=Path, help="the labels-moving variant's category folder")
    registering.add_argument("--runs", type=int, default=3)
    speed = sub.add_parser("speed", help="half the frame ignored against none")
    speed.add_argument("root", type=Path)
    speed.add_argument("category")
    speed.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tune_allocator()
    if args.what == "labels":
        labels_table(args.category, args.margin)
    elif args.what == "min-size":
        min_size_table(args.root, args.categories)
    elif args.what == "registration":
        registration_table(args.category, args.runs)
    else:
        speed_table(args.root, args.category, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
