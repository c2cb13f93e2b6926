"""Frame-geometry benchmark: images/s, stage times and peak memory on long frames, per geometry.

    python bench/bench_geometry.py                       # 4096 x 256 frames, auto / full_frame / squash
    python bench/bench_geometry.py --shape 1250 500 --geometries auto full_frame

Frames are strips of real MVTec images side by side (screw, from $EDGE_DATA_ROOT/mvtec), resized to
the asked shape; synthetic parts where the data is absent. A bank is fitted on --train frames at
1 % (the bank's size, and so the search's cost, grows with the training frames' patches), then
--test frames are scored in micro-batches, --repeats times; the table gives the median and every
run, as this machine's speed varies by about ±25 % from run to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.model import PatchCore, StageTimer
from edge.eval.mvtec import load_category
from edge.eval.synthetic import SynthSpec, generate
from edge.imageio import read_image
from edge.memory import peak_rss_mb, reset_peak_rss

STAGES = ("preprocess", "extract", "search", "map")


def source_images(count: int) -> tuple[str, list[np.ndarray]]:
    root = os.environ.get("EDGE_DATA_ROOT")
    if root and (Path(root) / "mvtec" / "screw").is_dir():
        paths = load_category(Path(root) / "mvtec", "screw").train
        return "MVTec screw strips", [read_image(p) for p in paths[:count]]
    folder = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    generate(folder, "part", SynthSpec(size=256, train=count, test_good=1, test_per_defect=1), progress=False)
    return "synthetic part strips", [read_image(p) for p in load_category(folder, "part").train]


def strips(images: list[np.ndarray], shape: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """`count` frames of `shape`: square cells of the shorter side, side by side, from `images`."""
    height, width = shape
    cell = min(height, width)
    cells = max(1, round(max(height, width) / cell))
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        row = [cv2.resize(images[i], (cell, cell)) for i in rng.integers(0, len(images), cells)]
        strip = np.hstack(row) if width >= height else np.vstack(row)
        frames.append(cv2.resize(strip, (width, height)))
    return frames


def geometry(name: str) -> InputGeometry:
    return InputGeometry.named(name)


def run(name: str, train: list, test: list, batch: int, repeats: int) -> dict:
    reset_peak_rss()
    started = time.perf_counter()
    model = PatchCore.fit(train, EngineConfig(geometry=geometry(name), coreset_fraction=0.01))
    fit_s = time.perf_counter() - started
    model.score(test[:batch])  # warm-up: exports, kernel selection
    runs, stages = [], []
    for _ in range(repeats):
        timer = StageTimer(model.device)
        started = time.perf_counter()
        for start in range(0, len(test), batch):
            model.score(test[start : start + batch], timer)
        runs.append(len(test) / (time.perf_counter() - started))
        stages.append({s: timer.seconds[s] * 1000 / len(test) for s in STAGES})
    middle = runs.index(statistics.median(runs))
    return {
        "geometry": name,
        "input": "x".join(str(v) for v in reversed(model.placement(test[0].shape[:2]).input_hw)),
        "bank": int(model.bank.shape[0]),
        "fit_s": fit_s,
        "runs": runs,
        "stages": stages[middle],
        "peak_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 4096), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--geometries", nargs="+", default=["auto", "full_frame", "squash"])
    parser.add_argument("--train", type=int, default=60, help="training frames (default 60)")
    parser.add_argument("--test", type=int, default=32, help="frames scored per run (default 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    label, images = source_images(320)
    train = strips(images, tuple(args.shape), args.train, seed=0)
    test = strips(images, tuple(args.shape), args.test, seed=1)
    print(f"{label}, frames {args.shape[1]}x{args.shape[0]}, {args.train} training frames, 1 % coreset, "
          f"batch {args.batch}, {args.repeats} runs")  # fmt: skip
    header = f"{'geometry':<12}{'input':>10}{'bank':>7}{'fit s':>7}" + "".join(f"{s:>11}" for s in STAGES)
    print(header + f"{'img/s (median; runs)':>34}{'peak MB':>9}")
    for name in args.geometries:
        row = run(name, train, test, args.batch, args.repeats)
        runs = ", ".join(f"{r:.1f}" for r in row["runs"])
        cells = "".join(f"{row['stages'][s]:>11.1f}" for s in STAGES)
        median = statistics.median(row["runs"])
        lead = f"{row['geometry']:<12}{row['input']:>10}{row['bank']:>7}{row['fit_s']:>7.1f}"
        print(f"{lead}{cells}{median:>12.1f} ({runs}){row['peak_mb']:>9.0f}", flush=True)
    print("stage columns: ms per frame (median run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
