"""How a frame becomes the network input, as settings: the geometry modes, `InputGeometry`, and
`resolve`, which makes an `auto` geometry concrete from training frame sizes. Pure arithmetic, no
OpenCV: the engine's configuration and the station's take it without the image code
(`edge/engine/geometry.py`, which applies a geometry to frames)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.errors import ImageError, UsageError

GEOMETRY_MODES = ("auto", "center_crop", "full_frame", "area", "squash")
DEFAULT_SIZES = {"center_crop": 256, "full_frame": 224, "area": 224, "squash": 224}  # `resize` by mode


@dataclass(frozen=True)
class InputGeometry:
    """How a frame (or its `roi`, (x, y, width, height) in frame pixels, applied first) becomes the
    network input.

    - `center_crop`: the paper's protocol: shorter side resized to `resize`, then a centre crop of
      `crop` x `crop` (a defect near the frame's edge can be cut away).
    - `full_frame`: the whole frame, aspect kept, shorter side resized to `resize`.
    - `area`: the whole frame, aspect kept, scaled to about `resize`² pixels (sides multiples of
      16): every frame costs the same and gives the same number of patches, whatever its shape.
    - `squash`: the whole frame resized to `resize` x `resize`, aspect not kept.
    - `auto`: chosen when a bank is fitted, from its training frames (`geometry.resolve`): `area`
      at the frames' own pixel count, within bounds. A fitted bank never holds `auto`.
    """

    resize: int = 256
    crop: int | None = 224
    roi: tuple[int, int, int, int] | None = None
    mode: str = ""  # empty: center_crop when `crop` is set, else full_frame (banks before modes)

    def __post_init__(self) -> None:
        if not self.mode:
            object.__setattr__(self, "mode", "full_frame" if self.crop is None else "center_crop")
        if self.mode not in GEOMETRY_MODES:
            raise UsageError(f"unknown geometry {self.mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
        if self.mode != "center_crop":
            object.__setattr__(self, "crop", None)
        if not 32 <= self.resize <= 1024:
            raise UsageError(f"input resize must lie in [32, 1024] pixels, got {self.resize}")
        if self.mode == "center_crop" and (self.crop is None or not 32 <= self.crop <= self.resize):
            raise UsageError(f"crop must lie in [32, resize={self.resize}], got {self.crop}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) <= 0 or min(self.roi[:2]) < 0):
            raise UsageError(f"roi must be (x, y, width, height) with positive size, got {self.roi}")

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        """The network input's size when it does not depend on the frame's shape."""
        if self.mode == "center_crop" and self.crop is not None:
            return self.crop, self.crop
        if self.mode == "squash":
            return self.resize, self.resize
        return None

    @classmethod
    def named(cls, mode: str, size: int | None = None) -> InputGeometry:
        """A geometry from a mode's name and optional size (DEFAULT_SIZES otherwise)."""
        if mode == "auto":
            return cls.auto()
        if mode not in DEFAULT_SIZES:
            raise UsageError(f"unknown geometry {mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
        return cls(resize=size or DEFAULT_SIZES[mode], crop=224, mode=mode)

    @classmethod
    def auto(cls, roi: tuple[int, int, int, int] | None = None) -> InputGeometry:
        return cls(crop=None, roi=roi, mode="auto")

    @classmethod
    def full_frame(cls, size: int = 224, roi: tuple[int, int, int, int] | None = None) -> InputGeometry:
        return cls(resize=size, crop=None, roi=roi, mode="full_frame")


AREA_STEP = 16  # `area` inputs have sides in multiples of the deepest level's stride
# `auto`: frames go in at their own resolution, but not below the paper's 224 x 224 input's pixel
# count (small frames are enlarged, as the paper's resize does) nor above 384 x 384 (cost: the
# search grows with the square of the pixel count). docs/engine.md gives the measurements.
AUTO_MIN_SIDE = 224
AUTO_MAX_SIDE = 384
AUTO_SAMPLE = 16  # training frames whose sizes decide `auto`


def resolve(geometry: InputGeometry, frame_hws: Sequence[tuple[int, int]]) -> InputGeometry:
    """`auto` made concrete for a bank from (some of) its training frames' sizes: `area` at their
    median pixel count (of the roi, where one is set), within [AUTO_MIN_SIDE², AUTO_MAX_SIDE²], so
    every frame of the bank costs the same, keeps its aspect, and is not shrunk below what its
    details need. Other modes come back as they are."""
    if geometry.mode != "auto":
        return geometry
    if not frame_hws:
        raise ImageError("geometry auto needs at least one training frame")
    if geometry.roi is not None:
        pixels = float(geometry.roi[2] * geometry.roi[3])
    else:
        pixels = float(np.median([h * w for h, w in frame_hws]))
    side = min(AUTO_MAX_SIDE, max(AUTO_MIN_SIDE, multiple_of(pixels**0.5, AREA_STEP)))
    return InputGeometry(resize=side, crop=None, roi=geometry.roi, mode="area")


def multiple_of(value: float, step: int) -> int:
    return max(step, step * round(value / step))
