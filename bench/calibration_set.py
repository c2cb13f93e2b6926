"""A large calibration set from the real frames at hand: KolektorSDD's good commutators, each
at several scales and mirrored, so that a fit sees thousands of good frames of tens of sizes, as a
line calibrating for weeks would (bench/bench_fit_scale.py fits on it).

    python bench/calibration_set.py --out /tmp/edge-calib --frames 2000
    python bench/calibration_set.py --out /tmp/edge-calib-5k --frames 5000
    python bench/calibration_set.py --out /tmp/edge-calib-shifted --frames 2000 --shift 4

Frames go to OUT/train/good/NNNNN.png (the layout edge-eval and edge-calibrate --from-folder read);
the source's test frames, untouched, to OUT/test/good, for scoring. Nothing here is tuned to the
set: scales and mirrors are fixed, and the frames are written in a seeded shuffle.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

SCALES = (1.0, 0.9, 0.8, 0.7, 0.62, 0.55, 0.5, 0.45, 0.4, 0.36)  # of each side, per variant
MIRRORS = (None, 1, 0, -1)  # none, left-right, up-down, both (cv2.flip codes)


def source_root() -> Path:
    root = Path(os.environ.get("EDGE_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "kolektorsdd" / "commutator"
    if not (folder / "train" / "good").is_dir():
        sys.exit(f"KolektorSDD is not under {root}/kolektorsdd (set EDGE_DATA_ROOT)")
    return folder


def variants(count: int, frames: int) -> list[tuple[int, float, int | None]]:
    """(frame index, scale, mirror) for `frames` variants of `count` frames: every frame at the
    first scale and mirror, then the next, so the sizes spread as the set grows."""
    plan = [(i, s, m) for m in MIRRORS for s in SCALES for i in range(count)]
    if frames > len(plan):
        sys.exit(
            f"at most {len(plan)} frames from {count} sources ({len(SCALES)} scales × {len(MIRRORS)} mirrors)"
        )
    return plan[:frames]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (outside the repository)")
    parser.add_argument("--frames", type=int, default=2000, help="good frames to write (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="crop each variant by up to this percentage of each side at each edge (seeded): parts "
        "that never sit twice in the same place, so that calibration's screening sees distinct "
        "frames rather than rescaled copies (default 0)",
    )
    args = parser.parse_args()
    jitter = np.random.default_rng(args.seed + 1)
    source = source_root()
    train = sorted((source / "train" / "good").glob("*.png"))
    good, test = args.out / "train" / "good", args.out / "test" / "good"
    good.mkdir(parents=True, exist_ok=True)
    test.mkdir(parents=True, exist_ok=True)
    plan = variants(len(train), args.frames)
    order = np.random.default_rng(args.seed).permutation(len(plan))
    sizes: Counter[tuple[int, int]] = Counter()
    for written, index in enumerate(order):
        frame, scale, mirror = plan[index]
        image = cv2.imread(str(train[frame]), cv2.IMREAD_GRAYSCALE)
        if mirror is not None:
            image = cv2.flip(image, mirror)
        if args.shift:
            height, width = image.shape[:2]
            top, bottom = (jitter.integers(0, int(height * args.shift / 100) + 1, 2)).tolist()
            left, right = (jitter.integers(0, int(width * args.shift / 100) + 1, 2)).tolist()
            image = image[top : height - bottom, left : width - right]
        if scale != 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sizes[image.shape[:2]] += 1
        cv2.imwrite(str(good / f"{written:05d}.png"), image)
    for path in sorted((source / "test" / "good").glob("*.png")):
        (test / path.name).write_bytes(path.read_bytes())
    print(f"{len(plan)} good frames of {len(sizes)} sizes in {good}; {len(list(test.iterdir()))} test frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
