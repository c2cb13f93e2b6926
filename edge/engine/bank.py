"""Building a memory bank from patch embeddings: per-level scales, the coreset's projection,
greedy k-center selection, and the record of what the bank saw. Scoring with it is model.py's."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from edge.engine.config import EngineConfig
from edge.engine.coreset import (
    PROJECTION_SEED_OFFSET,
    greedy_coreset,
    principal_projection,
    random_projection,
)
from edge.engine.features import equal_variance_scales

PCA_SAMPLE_ROWS = 65536  # principal axes of 472 values settle long before this many rows


def build_bank(
    chunks: list[torch.Tensor],
    config: EngineConfig,
    widths: tuple[int, ...],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The bank of unscaled patch embeddings (rows of width D, scaled here in place): the level
    scales, then the coreset rows; also the coreset's seconds. `progress` gets (picked, to pick)."""
    scales = equal_variance_scales(chunks, widths)
    _scale_levels(chunks, scales, widths)
    started = time.perf_counter()
    bank = _coreset_bank(chunks, config, progress)
    return bank, scales, time.perf_counter() - started


class TrainingSummary:
    """Counts, frame sizes, intensity statistics and a fingerprint of the images a bank saw."""

    def __init__(self) -> None:
        self.count = 0
        self.sizes: dict[str, int] = defaultdict(int)
        self.channels: dict[str, int] = defaultdict(int)
        self.pixel_sum = 0.0
        self.pixel_sq_sum = 0.0
        self.pixels = 0
        self.digest = hashlib.sha256()

    def add(self, image: np.ndarray) -> None:
        self.count += 1
        self.sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
        self.channels[str(1 if image.ndim == 2 else image.shape[2])] += 1
        values = image.astype(np.float64)
        self.pixel_sum += float(values.sum())
        self.pixel_sq_sum += float((values * values).sum())
        self.pixels += values.size
        self.digest.update(np.ascontiguousarray(image).tobytes())

    def to_dict(self) -> dict[str, Any]:
        mean = self.pixel_sum / max(self.pixels, 1)
        std = max(self.pixel_sq_sum / max(self.pixels, 1) - mean * mean, 0.0) ** 0.5
        return {
            "count": self.count,
            "frame_sizes": dict(self.sizes),
            "channels": dict(self.channels),
            "pixel_mean": round(mean, 3),
            "pixel_std": round(std, 3),
            "sha256": self.digest.hexdigest(),
        }


def training_summary(images: Iterable[np.ndarray]) -> dict[str, Any]:
    """What a bank saw (counts, frame sizes, intensities, fingerprint), for banks fitted from
    embeddings (calibration), as `fit` records it."""
    summary = TrainingSummary()
    for image in images:
        summary.add(image)
    return summary.to_dict()


def _scale_levels(chunks: list[torch.Tensor], scales: torch.Tensor, widths: tuple[int, ...]) -> None:
    column_scales = torch.repeat_interleave(scales, torch.tensor(widths))
    for chunk in chunks:
        chunk.mul_(column_scales)


def _coreset_bank(
    chunks: list[torch.Tensor], config: EngineConfig, progress: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """Select the coreset rows from per-batch feature chunks without concatenating them all."""
    total = sum(c.shape[0] for c in chunks)
    count = max(1, round(config.coreset_fraction * total))
    if count >= total:
        return torch.cat(chunks)
    projection = _projection(chunks, config)
    if projection is None:
        projected = torch.cat(chunks)
    else:  # filled in place: a list of projected chunks plus their concatenation would double it
        projected = torch.empty(total, projection.shape[1])
        start = 0
        for chunk in chunks:
            torch.mm(chunk, projection, out=projected[start : start + chunk.shape[0]])
            start += chunk.shape[0]
    chosen = greedy_coreset(projected, count, config.seed, progress=progress)
    del projected
    return _gather(chunks, chosen)


def _projection(chunks: list[torch.Tensor], config: EngineConfig) -> torch.Tensor | None:
    """The coreset's projection: a seeded Gaussian one, or principal axes of a seeded row sample."""
    dim = chunks[0].shape[1]
    if config.projection == "random":
        return random_projection(dim, config.projection_dim, config.seed)
    total = sum(c.shape[0] for c in chunks)
    generator = torch.Generator().manual_seed(config.seed + PROJECTION_SEED_OFFSET)
    sample = torch.randint(total, (min(total, PCA_SAMPLE_ROWS),), generator=generator)
    return principal_projection(_gather(chunks, sample), config.projection_dim)


def _gather(chunks: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Rows of the chunks' concatenation, by global index, without concatenating them."""
    offsets = np.cumsum([0] + [c.shape[0] for c in chunks])
    owner = torch.from_numpy(np.searchsorted(offsets, rows.numpy(), side="right") - 1)
    out = torch.empty(rows.shape[0], chunks[0].shape[1], dtype=chunks[0].dtype)
    for index in owner.unique().tolist():
        mine = owner == index
        out[mine] = chunks[index][rows[mine] - int(offsets[index])]
    return out
