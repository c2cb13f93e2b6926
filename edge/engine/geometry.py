"""Frame → network input (ROI, resize, optional centre crop), and the way back for anomaly maps.

Works on uint8 numpy images with OpenCV, which is several times faster than PIL for this and keeps
the torch side free of per-image Python work.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.engine.config import InputGeometry
from edge.errors import ImageError


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


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept HxW, HxWx1 or HxWx3 uint8 (greyscale is replicated to three channels)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"images must be uint8 numpy arrays, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageError(f"images must be HxW, HxWx1 or HxWx3, got shape {image.shape}")


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    shrinking = hw[0] * hw[1] < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return cv2.resize(image, (hw[1], hw[0]), interpolation=interpolation)


def place(frame_hw: tuple[int, int], geometry: InputGeometry) -> Placement:
    """Compute where the network input comes from; raises ImageError if the ROI leaves the frame."""
    height, width = frame_hw
    x, y, roi_w, roi_h = geometry.roi if geometry.roi is not None else (0, 0, width, height)
    if x + roi_w > width or y + roi_h > height:
        raise ImageError(f"roi {geometry.roi} does not fit a {width}x{height} frame")
    scale = geometry.resize / min(roi_h, roi_w)
    resized = (max(1, round(roi_h * scale)), max(1, round(roi_w * scale)))
    if geometry.crop is None:
        crop_box = (0, 0, *resized)
    else:
        crop = geometry.crop
        crop_box = ((resized[0] - crop) // 2, (resized[1] - crop) // 2, crop, crop)
    return Placement((height, width), (x, y, roi_w, roi_h), resized, crop_box)


def _to_input(image: np.ndarray, placement: Placement, nearest: bool) -> np.ndarray:
    x, y, w, h = placement.roi
    resized = _resize(image[y : y + h, x : x + w], placement.resized_hw, nearest)
    top, left, ch, cw = placement.crop_box
    return np.ascontiguousarray(resized[top : top + ch, left : left + cw])


def prepare(image: np.ndarray, geometry: InputGeometry) -> tuple[np.ndarray, Placement]:
    """Frame → HxWx3 uint8 network input and its placement."""
    rgb = as_rgb_uint8(image)
    placement = place(rgb.shape[:2], geometry)
    return _to_input(rgb, placement, nearest=False), placement


def mask_to_input(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """Apply a frame's placement to its ground-truth mask (nearest neighbour, stays binary)."""
    if mask.shape[:2] != placement.frame_hw:
        mask = cv2.resize(mask, placement.frame_hw[::-1], interpolation=cv2.INTER_NEAREST)
    return _to_input(mask, placement, nearest=True)


def map_to_frame(anomaly_map: np.ndarray, placement: Placement, fill: float = 0.0) -> np.ndarray:
    """Lay an input-geometry map back on the original frame; pixels never inspected get `fill`."""
    top, left, ch, cw = placement.crop_box
    resized = np.full(placement.resized_hw, fill, dtype=np.float32)
    resized[top : top + ch, left : left + cw] = anomaly_map
    x, y, w, h = placement.roi
    frame = np.full(placement.frame_hw, fill, dtype=np.float32)
    frame[y : y + h, x : x + w] = cv2.resize(resized, (w, h), interpolation=cv2.INTER_LINEAR)
    return frame
