"""Make frames of other shapes from an MVTec-format category, to measure geometry choices on them.

Lines send frames of any size and aspect; the public sets here are square or one shape, with
defects mostly inside the part. Three variants, each written as a new MVTec-format category (masks
follow their images exactly):

- `multisize`: every image cut to a band of random aspect (1:1 to 2.8:1, either orientation,
  holding the defect's centre) and rescaled by a random factor (0.5 to 1.5): a set of many sizes.
- `strip<K>`: K images side by side, each resized to a `cell`-pixel square: long frames (K = 16 at
  256 px is 4096 x 256). Train strips use each good image once; every test image sits in its own
  strip at a random place, the other places filled with other good test images.
- `edges`: square crops of half the shorter side. Each defect's centre lies within 8 % of the
  crop's side from one of its four sides: defects sit at the frame's edge, large ones cut by it;
  good frames (train and test) are cropped at random places.
- `labels`: every image (train and test) carries a printed label, a white tag with 6 random digits
  that differ on every frame, placed near the frame's centre with a random shift (±LABEL_SHIFT of
  the side) and turn (±LABEL_TURN degrees): a code that changes part by part, which a bank of good
  parts has never seen. Defects keep their masks (a label may cover part of one). `labels.json`
  beside the category gives the frame size and `label_region`: the rectangle every label lies in,
  the ignore region a recipe draws for it.
- `labels-moving`: the same tag, always at one place on the part, and the whole part moved (up to
  ±PART_SHIFT of the side) and turned (up to ±PART_TURN degrees) in every frame: the label moves and
  turns with the part. `labels.json` gives `label_region` (the tag's rectangle on the part as the
  reference frame `reference.png` shows it), `swept_region` (every place the tag can take in a
  frame) and `max_turn_deg`.

Usage: python -m edge.eval.variants ROOT CATEGORY OUT --variant strip16 --cell 256
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.eval.mvtec import Category, TestSample, load_category
from edge.files import write_bytes_atomic
from edge.imageio import read_image

log = logging.getLogger("edge.variants")
MAX_ASPECT = 2.8
SCALES = (0.5, 1.5)
EDGE_CROP = 0.5  # `edges`: crop side over the frame's shorter side
EDGE_BAND = 0.08  # `edges`: largest distance of a defect's centre from the crop's side, over the side
LABEL_SIZE = (0.30, 0.12)  # `labels`: the tag's width and height over the frame's side
LABEL_SHIFT = 0.03
LABEL_TURN = 8.0
LABEL_CENTRE = (0.5, 0.62)  # where tags sit, over the frame's width and height
PART_SHIFT = 0.04  # `labels-moving`: the part's largest shift over the side
PART_TURN = 12.0  # and its largest turn, degrees


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise UsageError(f"could not encode {path}")
    write_bytes_atomic(path, encoded.tobytes())


def _band(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random-aspect band of the image that holds the defect's centre, randomly rescaled."""
    height, width = image.shape[:2]
    aspect = rng.uniform(1.0, MAX_ASPECT)
    horizontal = rng.random() < 0.5
    ys, xs = np.nonzero(mask)
    if horizontal:
        band = max(16, round(height / aspect))
        centre = int(ys.mean()) if ys.size else int(rng.integers(0, height))
        top = int(np.clip(centre - band // 2, 0, height - band))
        image, mask = image[top : top + band], mask[top : top + band]
    else:
        band = max(16, round(width / aspect))
        centre = int(xs.mean()) if xs.size else int(rng.integers(0, width))
        left = int(np.clip(centre - band // 2, 0, width - band))
        image, mask = image[:, left : left + band], mask[:, left : left + band]
    scale = rng.uniform(*SCALES)
    size = (max(16, round(image.shape[1] * scale)), max(16, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(
        mask, size, interpolation=cv2.INTER_NEAREST_EXACT
    )


def _edge_crop(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A square crop; where the mask holds a defect, its centre lies near one of the crop's sides.

    The side is drawn among those the frame allows: at half the shorter side, every centre has at
    least one (a defect in the middle of the frame can sit at the crop's top or bottom)."""
    height, width = image.shape[:2]
    side = max(16, round(EDGE_CROP * min(height, width)))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    ys, xs = np.nonzero(mask)
    if ys.size:
        centre_y, centre_x = int(ys.mean()), int(xs.mean())
        inset = int(rng.integers(0, round(EDGE_BAND * side) + 1))
        tops = (centre_y - inset, centre_y + inset - (side - 1))  # centre by the top or bottom side
        lefts = (centre_x - inset, centre_x + inset - (side - 1))  # by the left or right side
        choices = [("y", v) for v in tops if 0 <= v <= height - side]
        choices += [("x", v) for v in lefts if 0 <= v <= width - side]
        if choices:
            axis, value = choices[int(rng.integers(len(choices)))]
            if axis == "y":
                top, left = value, centre_x - int(rng.integers(side // 4, 3 * side // 4))
            else:
                left, top = value, centre_y - int(rng.integers(side // 4, 3 * side // 4))
        top, left = int(np.clip(top, 0, height - side)), int(np.clip(left, 0, width - side))
    return image[top : top + side, left : left + side], mask[top : top + side, left : left + side]


def _cell(image: np.ndarray, cell: int, nearest: bool = False) -> np.ndarray:
    interpolation = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_AREA
    return cv2.resize(image, (cell, cell), interpolation=interpolation)


def _same_channels(images: list[np.ndarray]) -> list[np.ndarray]:
    if any(i.ndim == 3 for i in images):
        return [i if i.ndim == 3 else cv2.cvtColor(i, cv2.COLOR_GRAY2BGR) for i in images]
    return images


Cut = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def make_cuts(category: Category, out: Path, cut: Cut, seed: int) -> None:
    """Every image (and its mask) cut once by `cut`: `_band` for multisize, `_edge_crop` for edges."""
    rng = np.random.default_rng(seed)
    for path in tqdm(category.train, desc="train", unit="img"):
        image = read_image(path)
        piece, _ = cut(image, np.zeros(image.shape[:2], np.uint8), rng)
        _write_png(out / "train" / "good" / f"{path.stem}.png", _bgr(piece))
    for sample in tqdm(category.test, desc="test", unit="img"):
        image = read_image(sample.path)
        mask = sample.mask(image.shape[:2]).astype(np.uint8) * 255
        piece, piece_mask = cut(image, mask, rng)
        _write_test(out, sample, piece, piece_mask)


def make_strips(category: Category, out: Path, count: int, cell: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = [category.train[i] for i in rng.permutation(len(category.train))]
    for start in tqdm(range(0, len(train) - count + 1, count), desc="train", unit="strip"):
        cells = _same_channels([_cell(read_image(p), cell) for p in train[start : start + count]])
        _write_png(out / "train" / "good" / f"strip{start // count:04d}.png", _bgr(np.hstack(cells)))
    goods = [s for s in category.test if s.defect_type == "good"]
    if len(goods) < count:
        raise UsageError(f"{category.name} has {len(goods)} good test images; a strip of {count} needs more")
    for sample in tqdm(category.test, desc="test", unit="strip"):
        image = read_image(sample.path)
        mask = sample.mask(image.shape[:2]).astype(np.uint8) * 255
        others = [g for g in goods if g.path != sample.path]
        fillers = [others[i] for i in rng.choice(len(others), count - 1, replace=False)]
        place = int(rng.integers(0, count))
        cells = [_cell(read_image(f.path), cell) for f in fillers]
        masks = [np.zeros((cell, cell), np.uint8) for _ in fillers]
        cells.insert(place, _cell(image, cell))
        masks.insert(place, _cell(mask, cell, nearest=True))
        _write_test(out, sample, np.hstack(_same_channels(cells)), np.hstack(masks))


def _label_corners(side: int, shift: np.ndarray, turn: float) -> np.ndarray:
    """The tag's four corners in frame pixels for a shift (over the side) and a turn (degrees)."""
    width, height = LABEL_SIZE[0] * side, LABEL_SIZE[1] * side
    centre = np.array(LABEL_CENTRE) * side + shift * side
    box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (width, height), turn))
    return np.round(box).astype(np.int32)


def _with_label(image: np.ndarray, rng: np.random.Generator, fixed: bool = False) -> np.ndarray:
    """The image with a tag of 6 random digits at a random shift and turn (`fixed`: at its place)."""
    side = min(image.shape[:2])
    shift, turn = rng.uniform(-LABEL_SHIFT, LABEL_SHIFT, 2), float(rng.uniform(-LABEL_TURN, LABEL_TURN))
    if fixed:
        shift, turn = np.zeros(2), 0.0
    corners = _label_corners(side, shift, turn)
    tag_w, tag_h = round(LABEL_SIZE[0] * side), round(LABEL_SIZE[1] * side)
    tag = np.full((tag_h, tag_w), 255, np.uint8)
    digits = "".join(str(d) for d in rng.integers(0, 10, 6))
    scale = min(tag_h / 40, tag_w / 150)  # six digits of FONT_HERSHEY_SIMPLEX fit the tag
    cv2.putText(tag, digits, (round(0.06 * tag_w), round(0.72 * tag_h)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, 0, max(1, round(2 * scale)), cv2.LINE_AA)  # fmt: skip
    source = np.float32([[0, tag_h], [0, 0], [tag_w, 0], [tag_w, tag_h]])
    warp = cv2.getPerspectiveTransform(source, corners.astype(np.float32))
    height, width = image.shape[:2]
    printed = cv2.warpPerspective(tag, warp, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    cover = cv2.warpPerspective(np.full_like(tag, 255), warp, (width, height), borderValue=0) > 127
    labelled = image.copy()
    ink = printed if image.ndim == 2 else printed[:, :, None]
    labelled[cover] = np.broadcast_to(ink, image.shape)[cover]
    return labelled


def label_region(side: int) -> list[int]:
    """[x, y, width, height]: the rectangle every tag of the `labels` variant lies in."""
    corners = [
        _label_corners(side, np.array([sx, sy]) * LABEL_SHIFT, turn)
        for sx in (-1, 1) for sy in (-1, 1) for turn in (-LABEL_TURN, 0.0, LABEL_TURN)
    ]  # fmt: skip
    points = np.concatenate(corners)
    x0, y0 = np.maximum(points.min(0) - 2, 0)
    x1, y1 = np.minimum(points.max(0) + 2, side - 1)
    return [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]


def _part_motion(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A 2x3 rigid motion of the whole frame: a turn about its centre and a shift."""
    height, width = shape[:2]
    turn = float(rng.uniform(-PART_TURN, PART_TURN))
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), turn, 1.0)
    matrix[:, 2] += rng.uniform(-PART_SHIFT, PART_SHIFT, 2) * min(height, width)
    return matrix


def _moved(image: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> np.ndarray:
    height, width = image.shape[:2]
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REFLECT)


def _swept_region(side: int) -> list[int]:
    """Every place the fixed tag can take once the part is moved and turned."""
    tag = _label_corners(side, np.zeros(2), 0.0).astype(np.float64)
    points = []
    for turn in np.linspace(-PART_TURN, PART_TURN, 9):
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), float(turn), 1.0)
        for dx in (-PART_SHIFT, PART_SHIFT):
            for dy in (-PART_SHIFT, PART_SHIFT):
                points.append(tag @ matrix[:, :2].T + matrix[:, 2] + np.array([dx, dy]) * side)
    stacked = np.concatenate(points)
    x0, y0 = np.maximum(np.floor(stacked.min(0)) - 2, 0)
    x1, y1 = np.minimum(np.ceil(stacked.max(0)) + 2, side - 1)
    return [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]


def make_labels(category: Category, out: Path, seed: int, moving: bool = False) -> None:
    rng = np.random.default_rng(seed)
    sizes = set()

    def labelled(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if not moving:
            return _with_label(image, rng), mask
        matrix = _part_motion(image.shape, rng)
        tagged = _moved(_with_label(image, rng, fixed=True), matrix)
        return tagged, None if mask is None else _moved(mask, matrix, nearest=True)

    for path in tqdm(category.train, desc="train", unit="img"):
        image = read_image(path)
        sizes.add(image.shape[:2])
        _write_png(out / "train" / "good" / f"{path.stem}.png", _bgr(labelled(image)[0]))
    for sample in tqdm(category.test, desc="test", unit="img"):
        image = read_image(sample.path)
        tagged, mask = labelled(image, sample.mask(image.shape[:2]).astype(np.uint8) * 255)
        assert mask is not None
        _write_test(out, sample, tagged, mask)
    if len(sizes) != 1:
        raise UsageError(f"the labels variant needs frames of one size; {category.name} has {len(sizes)}")
    height, width = sizes.pop()
    side = min(height, width)
    facts: dict = {"frame": [width, height], "label_region": label_region(side)}
    if moving:
        tag = _label_corners(side, np.zeros(2), 0.0)
        x0, y0 = np.maximum(tag.min(0) - 2, 0)
        x1, y1 = np.minimum(tag.max(0) + 2, side - 1)
        facts |= {"label_region": [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)],
                  "swept_region": _swept_region(side), "max_turn_deg": PART_TURN}  # fmt: skip
        reference = _with_label(read_image(category.train[0]), rng, fixed=True)
        _write_png(out / "reference.png", _bgr(reference))
    write_bytes_atomic(out / "labels.json", json.dumps(facts).encode())


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image


def _write_test(out: Path, sample: TestSample, image: np.ndarray, mask: np.ndarray) -> None:
    name = f"{sample.path.stem}.png"
    _write_png(out / "test" / sample.defect_type / name, _bgr(image))
    if sample.defect_type != "good":
        _write_png(out / "ground_truth" / sample.defect_type / f"{sample.path.stem}_mask.png", mask)


VARIANTS = ("multisize", "edges", "labels", "labels-moving")
"""The variants by name; `strip<K>` is the one named with a parameter."""
VARIANT_CHOICES = ", ".join(VARIANTS) + " or strip<K> (K >= 2 images side by side)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge.eval.variants", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="folder in MVTec layout")
    parser.add_argument("category")
    parser.add_argument("out", type=Path, help="folder to write the new category into (MVTec layout)")
    parser.add_argument(
        "--variant",
        required=True,
        help=VARIANT_CHOICES,
    )
    parser.add_argument("--cell", type=int, default=256, help="strip cell size in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    category = load_category(args.root, args.category)
    out = args.out / f"{args.category}-{args.variant}"
    if out.exists():
        raise UsageError(f"{out} exists; remove it or choose another folder")
    if args.variant == "multisize":
        make_cuts(category, out, _band, args.seed)
    elif args.variant == "edges":
        make_cuts(category, out, _edge_crop, args.seed)
    elif args.variant in ("labels", "labels-moving"):
        make_labels(category, out, args.seed, moving=args.variant == "labels-moving")
    elif args.variant.startswith("strip") and args.variant[5:].isdigit() and int(args.variant[5:]) >= 2:
        make_strips(category, out, int(args.variant[5:]), args.cell, args.seed)
    else:
        raise UsageError(f"unknown variant {args.variant!r}: {VARIANT_CHOICES}")
    log.info("wrote %s", out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
