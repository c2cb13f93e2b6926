"""The MVTec AD folder layout: CAT/train/good, CAT/test/<type>, CAT/ground_truth/<type>/*_mask.png."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ImageError, UsageError
from edge.imageio import image_files, read_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSample:
    path: Path
    defect_type: str  # "good" for normal images
    mask_path: Path | None

    @property
    def label(self) -> int:
        return 0 if self.defect_type == "good" else 1

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The ground-truth mask (all False for good images and for defects without a mask file)."""
        if self.mask_path is None:
            return np.zeros(shape, dtype=bool)
        mask = read_mask(self.mask_path)
        if mask.shape != tuple(shape):
            raise ImageError(
                f"mask {self.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {self.path} is "
                f"{shape[1]}x{shape[0]}: a ground-truth mask must have its image's size"
            )
        return mask


@dataclass(frozen=True)
class Category:
    name: str
    train: list[Path]
    test: list[TestSample]


def load_category(root: Path, name: str) -> Category:
    """List a category's files; a missing or empty folder is a UsageError that names it."""
    base = root / name
    train_dir, test_dir = base / "train" / "good", base / "test"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder} is missing: {root} is not in MVTec layout for category {name!r}")
    train = image_files(train_dir)
    if not train:
        raise UsageError(f"{train_dir} holds no images")
    samples: list[TestSample] = []
    missing_masks = 0
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in image_files(type_dir):
            mask_path = base / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
            if not mask_path.is_file():
                missing_masks += type_dir.name != "good"
                mask_path = None
            samples.append(TestSample(path, type_dir.name, mask_path))
    if not samples:
        raise UsageError(f"{test_dir} holds no images")
    if missing_masks:
        log.warning(
            "%s: %d defective test images have no mask; their pixels count as normal", name, missing_masks
        )
    return Category(name, train, samples)
