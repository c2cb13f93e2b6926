"""A small synthetic inspection data set in MVTec layout, made on the spot (no download, no license).

A textured part (a disc with a striped, cross-hatched face and four holes) on a plain
background; good parts vary in position, rotation, lighting and sensor noise. Defective parts
carry scratches, dark or bright spots, or a missing piece, each with its exact ground-truth mask.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.synthetic_parts import DEFECT_TYPES, draw_defect, make_part

log = logging.getLogger("edge.synth")


@dataclass(frozen=True)
class SynthSpec:
    size: int = 256
    train: int = 40
    test_good: int = 12
    test_per_defect: int = 8
    seed: int = 0
    greyscale: bool = False


def _write(path: Path, image: np.ndarray, greyscale: bool) -> None:
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    pixels = (
        cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if greyscale else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    )
    if not cv2.imwrite(str(path), pixels):
        raise UsageError(f"cannot write {path}")


def generate(
    root: Path, category: str = "synthetic_part", spec: SynthSpec | None = None, progress: bool = True
) -> Path:
    """Write one category in MVTec layout under root/category; returns that folder."""
    spec = spec or SynthSpec()
    rng = np.random.default_rng(spec.seed)
    base = root / category
    jobs: list[tuple[Path, str]] = [
        (base / "train" / "good" / f"{i:03d}.png", "good") for i in range(spec.train)
    ]
    jobs += [(base / "test" / "good" / f"{i:03d}.png", "good") for i in range(spec.test_good)]
    jobs += [
        (base / "test" / kind / f"{i:03d}.png", kind)
        for kind in DEFECT_TYPES
        for i in range(spec.test_per_defect)
    ]
    for path, kind in tqdm(jobs, desc="synthetic parts", unit="img", disable=not progress, leave=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        image = make_part(rng, spec.size)
        if kind != "good":
            mask = draw_defect(rng, image, kind)
            mask_dir = base / "ground_truth" / kind
            mask_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_dir / f"{path.stem}_mask.png"), mask)
        _write(path, image, spec.greyscale)
    return base


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="edge-synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write the MVTec-layout category into")
    parser.add_argument("--category", default="synthetic_part")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--train", type=int, default=40, help="good training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greyscale", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    if args.size < 64 or args.train < 1:
        raise UsageError("--size must be at least 64 and --train at least 1")
    base = generate(
        args.root,
        args.category,
        SynthSpec(size=args.size, train=args.train, seed=args.seed, greyscale=args.greyscale),
    )
    log.info("wrote %s", base)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
