"""Frame → network input (ROI, resize, optional centre crop), and the way back for anomaly maps.

Works on uint8 numpy images with OpenCV, which is several times faster than PIL for this and keeps
the torch side free of per-image Python work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.engine.input_geometry import AREA_STEP, InputGeometry, multiple_of
from edge.errors import ImageError, UsageError

# Bounds on what one frame can cost, whatever its header says: a 1 x 20000 frame would otherwise be
# enlarged to 256 x 5,120,000 before the crop (gigabytes). Line-scan frames up to 32:1 are scored
# whole; longer ones through an roi. Enlarging more than 16 times invents the detail it inspects.
MAX_ASPECT_RATIO = 32
MAX_UPSCALE = 16
MAX_INPUT_PIXELS = 2048 * 2048  # the whole-frame network input (7168 x 224 at 32:1 is 1.6 M)


@dataclass(frozen=True)
class Placement:
    """Where the network input sits in the original frame, so a map can be laid back on it."""

    frame_hw: tuple[int, int]
    roi: tuple[int, int, int, int]  # x, y, width, height in the frame
    resized_hw: tuple[int, int]  # size of the ROI after resizing
    crop_box: tuple[int, int, int, int]  # top, left, height, width in the resized ROI

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.crop_box[2], self.crop_box[3]

    @property
    def frame_px_per_input_px(self) -> float:
        """The frame area one network-input pixel stands for."""
        _, _, width, height = self.roi
        return (width / self.resized_hw[1]) * (height / self.resized_hw[0])


def _check_layout(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1 or HxWx3 uint8 → HxW or HxWx3 (a view), or ImageError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"images must be uint8 numpy arrays, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    raise ImageError(f"images must be HxW, HxWx1 or HxWx3, got shape {image.shape}")


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept HxW, HxWx1 or HxWx3 uint8 (greyscale is replicated to three channels)."""
    image = _check_layout(image)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    shrinking = hw[0] * hw[1] < image.shape[0] * image.shape[1]
    # masks: INTER_NEAREST_EXACT samples at pixel centres, as the reference resize does; plain
    # INTER_NEAREST's grid is shifted by half a pixel and under-reported PRO by 0.001-0.003
    interpolation = (
        cv2.INTER_NEAREST_EXACT if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    )
    return cv2.resize(image, (hw[1], hw[0]), interpolation=interpolation)


def place(frame_hw: tuple[int, int], geometry: InputGeometry) -> Placement:
    """Compute where the network input comes from; raises ImageError (`shape: ...`) if the ROI
    leaves the frame or the frame's shape would cost unbounded work (see MAX_ASPECT_RATIO)."""
    if geometry.mode == "auto":
        raise UsageError("geometry auto is resolved when a bank is fitted (geometry.resolve)")
    height, width = frame_hw
    x, y, roi_w, roi_h = geometry.roi if geometry.roi is not None else (0, 0, width, height)
    if x + roi_w > width or y + roi_h > height:
        raise ImageError(f"shape: roi {geometry.roi} does not fit a {width}x{height} frame")
    if max(roi_h, roi_w) > MAX_ASPECT_RATIO * min(roi_h, roi_w):
        raise ImageError(
            f"shape: a {roi_w}x{roi_h} frame (or roi) is longer than {MAX_ASPECT_RATIO}:1; "
            "inspect it through an roi or in sections"
        )
    resized = _resized_hw((roi_h, roi_w), geometry)
    if max(resized[0] / roi_h, resized[1] / roi_w) > MAX_UPSCALE:
        raise ImageError(
            f"shape: a {roi_w}x{roi_h} frame (or roi) is too small for a {geometry.resize}-pixel input "
            f"(it would be enlarged more than {MAX_UPSCALE} times)"
        )
    if geometry.mode == "center_crop" and geometry.crop is not None:
        crop = geometry.crop
        crop_box = ((resized[0] - crop) // 2, (resized[1] - crop) // 2, crop, crop)
    else:
        if resized[0] * resized[1] > MAX_INPUT_PIXELS:
            raise ImageError(
                f"shape: a {roi_w}x{roi_h} frame at {geometry.resize} px is a network input of "
                f"{resized[1]}x{resized[0]}, more than {MAX_INPUT_PIXELS} pixels"
            )
        crop_box = (0, 0, *resized)
    return Placement((height, width), (x, y, roi_w, roi_h), resized, crop_box)


def _resized_hw(roi_hw: tuple[int, int], geometry: InputGeometry) -> tuple[int, int]:
    """The ROI's size after resizing, before any crop."""
    roi_h, roi_w = roi_hw
    if geometry.mode == "squash":
        return geometry.resize, geometry.resize
    if geometry.mode == "area":  # about resize² pixels, aspect kept, sides on the stride-16 grid
        aspect = roi_w / roi_h
        return multiple_of(geometry.resize / aspect**0.5, AREA_STEP), multiple_of(
            geometry.resize * aspect**0.5, AREA_STEP
        )
    scale = geometry.resize / min(roi_h, roi_w)
    return max(1, round(roi_h * scale)), max(1, round(roi_w * scale))


def _to_input(image: np.ndarray, placement: Placement, nearest: bool) -> np.ndarray:
    x, y, w, h = placement.roi
    resized = _resize(image[y : y + h, x : x + w], placement.resized_hw, nearest)
    top, left, ch, cw = placement.crop_box
    return np.ascontiguousarray(resized[top : top + ch, left : left + cw])


def prepare(image: np.ndarray, geometry: InputGeometry) -> tuple[np.ndarray, Placement]:
    """Frame → HxWx3 uint8 network input and its placement."""
    image = _check_layout(image)
    placement = place(image.shape[:2], geometry)
    pixels = _to_input(image, placement, nearest=False)  # resized first: a large mono frame is
    return as_rgb_uint8(pixels), placement  # never replicated to three channels at full size


def mask_to_frame(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """A boolean input-geometry mask laid back on the original frame as uint8 0/255, smoothly
    (linear interpolation, then halfway), using memory of the frame's size in uint8 only."""
    frame = map_to_frame(mask.astype(np.uint8) * 255, placement)
    cv2.threshold(frame, 127, 255, cv2.THRESH_BINARY, dst=frame)
    return frame


def box_to_frame(box: Sequence[int], placement: Placement) -> list[int]:
    """An [x, y, width, height] box in input pixels → the frame pixels it covers."""
    top, left, _, _ = placement.crop_box
    x, y, w, h = placement.roi
    scale_y, scale_x = h / placement.resized_hw[0], w / placement.resized_hw[1]
    x0, y0 = x + int((box[0] + left) * scale_x), y + int((box[1] + top) * scale_y)
    x1 = min(x + w, x + int(np.ceil((box[0] + box[2] + left) * scale_x)))
    y1 = min(y + h, y + int(np.ceil((box[1] + box[3] + top) * scale_y)))
    return [x0, y0, max(1, x1 - x0), max(1, y1 - y0)]


def mask_to_input(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """Apply a frame's placement to its ground-truth mask (nearest neighbour, stays binary)."""
    if mask.shape[:2] != placement.frame_hw:
        raise ImageError(f"a {mask.shape[1]}x{mask.shape[0]} mask does not fit a {placement.frame_hw[1]}x"
                         f"{placement.frame_hw[0]} frame")  # fmt: skip
    return _to_input(mask, placement, nearest=True)


def map_to_frame(anomaly_map: np.ndarray, placement: Placement, fill: float = 0.0) -> np.ndarray:
    """Lay an input-geometry map (float32, or uint8 for masks) back on the original frame; pixels
    never inspected get `fill`."""
    top, left, ch, cw = placement.crop_box
    resized = np.full(placement.resized_hw, fill, dtype=anomaly_map.dtype)
    resized[top : top + ch, left : left + cw] = anomaly_map
    x, y, w, h = placement.roi
    frame = np.full(placement.frame_hw, fill, dtype=anomaly_map.dtype)
    frame[y : y + h, x : x + w] = cv2.resize(resized, (w, h), interpolation=cv2.INTER_LINEAR)
    return frame
