"""Reading image files into the engine's input form: uint8, greyscale HxW or RGB HxWx3."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

import cv2
import numpy as np

from edge.errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(Sequence[np.ndarray]):
    """Images read from their files at each access: thousands of frames without holding them
    decoded (a calibration reads each a few times)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> ImageFiles: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | ImageFiles:
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        return read_image(self.paths[index])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Bring 16-bit and float images to uint8 (cameras deliver Mono12/16 and float stacks too)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 greyscale (HxW) or RGB (HxWx3); alpha is dropped."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageError(f"cannot read image {path}: missing, unreadable or not an image")
    data = to_uint8(data)
    if data.ndim == 3:
        if data.shape[2] == 1:
            return data[:, :, 0]
        if data.shape[2] == 4:
            return cv2.cvtColor(data, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    return data


def encode_png(image: np.ndarray, compression: int | None = None) -> bytes:
    """A uint8 greyscale or RGB image as PNG bytes (what read_image reads back unchanged);
    `compression` is zlib's level, 0-9 (None: OpenCV's default)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, compression]
    ok, png = cv2.imencode(".png", bgr, params)
    if not ok:
        raise ImageError(f"an image of shape {image.shape} could not be encoded as PNG")
    return png.tobytes()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a bool array (any non-zero pixel is defective)."""
    data = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if data is None:
        raise ImageError(f"cannot read mask {path}")
    return data > 0
