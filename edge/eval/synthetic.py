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

log = logging.getLogger("edge.synth")
DEFECT_TYPES = ("scratch", "spot", "missing")


@dataclass(frozen=True)
class SynthSpec:
    size: int = 256
    train: int = 40
    test_good: int = 12
    test_per_defect: int = 8
    seed: int = 0
    greyscale: bool = False


def make_part(rng: np.random.Generator, size: int) -> np.ndarray:
    """One good part: textured disc, jittered in place, angle and light, with sensor noise."""
    canvas = np.full((size, size, 3), (38, 42, 46), np.float32)
    centre = (size / 2 + rng.uniform(-0.04, 0.04) * size, size / 2 + rng.uniform(-0.04, 0.04) * size)
    radius = 0.36 * size
    angle = rng.uniform(0, 180)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.deg2rad(angle)
    u = (xx - centre[0]) * np.cos(theta) + (yy - centre[1]) * np.sin(theta)
    v = -(xx - centre[0]) * np.sin(theta) + (yy - centre[1]) * np.cos(theta)
    texture = 150 + 35 * np.sin(u / size * 60) + 18 * np.sin(v / size * 25)
    disc = (u**2 + v**2) <= radius**2
    for k in range(4):  # four holes at fixed places on the part: they rotate with it
        hu, hv = 0.55 * radius * np.cos(k * np.pi / 2), 0.55 * radius * np.sin(k * np.pi / 2)
        disc &= (u - hu) ** 2 + (v - hv) ** 2 > (0.09 * radius) ** 2
    tint = np.array([1.0, 0.92, 0.8], np.float32)
    canvas[disc] = texture[disc][:, None] * tint
    canvas *= rng.uniform(0.85, 1.15)  # lighting
    canvas += rng.normal(0, 4.0, canvas.shape)  # sensor noise
    return canvas


def draw_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """Draw one defect on `image` in place; return its mask (uint8 0/255)."""
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    cx, cy = (int(size / 2 + rng.uniform(-0.22, 0.22) * size) for _ in range(2))
    if kind == "scratch":
        length, angle = rng.uniform(0.12, 0.3) * size, rng.uniform(0, np.pi)
        dx, dy = int(np.cos(angle) * length / 2), int(np.sin(angle) * length / 2)
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, thickness=max(2, size // 90))
        shade = rng.choice([35.0, 235.0])
    elif kind == "spot":
        axes = (int(rng.uniform(0.02, 0.05) * size), int(rng.uniform(0.02, 0.05) * size))
        cv2.ellipse(mask, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 255, thickness=-1)
        shade = rng.choice([20.0, 250.0])
    else:
        radius = int(rng.uniform(0.06, 0.1) * size)
        cv2.circle(mask, (cx, cy), radius, 255, thickness=-1)
        shade = 40.0  # the background shows through where material is missing
    image[mask > 0] = shade + rng.normal(0, 4.0, (int((mask > 0).sum()), 3))
    return mask


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
    parser = argparse.ArgumentParser(prog="edge-synth", description=__doc__.splitlines()[0])
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
