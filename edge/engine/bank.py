"""Building a memory bank from patch embeddings: per-level scales, the coreset's projection,
greedy k-center selection, and the record of what the bank saw. Scoring with it is model.py's.

With `EngineConfig.fit_chunk_rows` set, a fit's memory does not grow with its good frames
(`BankBuilder`): rows are taken a batch at a time; whenever more than that many wait, they are
reduced to `KEEP` times the share of the bank they could need (greedy k-center under the scales
known so far, projected on the principal axes of a uniform sample of every row so far), and the
union of what the reductions kept is reduced to half a chunk whenever it outgrows one. The bank is
then chosen from that union and the rows still waiting, with the scales and the principal axes of
every row. It holds at most two chunks of rows and the sample, whatever the number of rows. A fit
of at most a chunk of rows (and every fit by default) is never reduced: its bank is the one the
rows themselves give."""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable
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
from edge.engine.features import scales_from_sums

PCA_SAMPLE_ROWS = 65536  # principal axes of 472 values settle long before this many rows
KEEP = 4  # a reduction keeps this many times the rows its share of the bank takes


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


def _scale_levels(chunks: list[torch.Tensor], scales: torch.Tensor, widths: tuple[int, ...]) -> None:
    column_scales = torch.repeat_interleave(scales, torch.tensor(widths))
    for chunk in chunks:
        chunk.mul_(column_scales)


def _coreset_bank(
    chunks: list[torch.Tensor],
    config: EngineConfig,
    progress: Callable[[int, int], None] | None = None,
    count: int | None = None,
    column_scales: torch.Tensor | None = None,
    sample: torch.Tensor | None = None,
) -> torch.Tensor:
    """Select `count` coreset rows (default: the coreset fraction of them) from per-batch feature
    chunks without concatenating them all; `column_scales`: select as if the rows were scaled so
    (the rows themselves stay as they are); `sample`: the rows whose principal axes project them
    (default: a seeded sample of the chunks')."""
    total = sum(c.shape[0] for c in chunks)
    count = max(1, round(config.coreset_fraction * total)) if count is None else count
    if count >= total:
        return torch.cat(chunks)
    projection = _projection(chunks, config, column_scales, sample)
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


def _projection(
    chunks: list[torch.Tensor],
    config: EngineConfig,
    column_scales: torch.Tensor | None = None,
    sample: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The coreset's projection: a seeded Gaussian one, or principal axes of a row sample (`sample`,
    else a seeded one of the chunks'); with `column_scales`, of the rows so scaled, the scales
    folded into it."""
    dim = chunks[0].shape[1]
    if config.projection == "random":
        projection = random_projection(dim, config.projection_dim, config.seed)
    else:
        if sample is None:
            total = sum(c.shape[0] for c in chunks)
            generator = torch.Generator().manual_seed(config.seed + PROJECTION_SEED_OFFSET)
            sample = _gather(
                chunks, torch.randint(total, (min(total, PCA_SAMPLE_ROWS),), generator=generator)
            )
        projection = principal_projection(sample if column_scales is None else sample * column_scales,
                                          config.projection_dim)  # fmt: skip
    if column_scales is None:
        return projection
    return column_scales[:, None] * (torch.eye(dim) if projection is None else projection)


class BankBuilder:
    """Patch embeddings in, a bank out; with a chunk, holding at most two chunks of rows and a
    sample of them however many rows come (the module's docstring says how)."""

    def __init__(
        self,
        config: EngineConfig,
        widths: tuple[int, ...],
        chunk_rows: int | None = None,
    ) -> None:
        self.config, self.widths = config, widths
        # rows held before a reduction (EngineConfig.fit_chunk_rows; 0: never reduce)
        self.chunk_rows = (config.fit_chunk_rows or None) if chunk_rows is None else chunk_rows
        self.keep = KEEP
        self.pending: list[torch.Tensor] = []  # rows not reduced yet
        self.pending_rows = 0
        self.kept: list[torch.Tensor] = []  # what the reductions kept
        self.kept_rows = 0
        self.rows = 0  # every row taken
        self.reductions = 0
        self.peak_rows = 0  # the most rows held at once (pending and kept)
        self.total: torch.Tensor | None = None  # column sums, float64: the level scales of every row
        self.total_sq: torch.Tensor | None = None
        # a uniform sample of every row so far (reservoir sampling): the projection's principal axes
        self.sample: torch.Tensor | None = None
        self.sampled = 0
        self.generator = torch.Generator().manual_seed(config.seed + PROJECTION_SEED_OFFSET)

    def add(self, rows: torch.Tensor) -> None:
        """Unscaled embeddings, (..., D); held by reference, and scaled in place when the bank is chosen."""
        rows = rows.reshape(-1, rows.shape[-1]).float()
        wide = rows.double()
        if self.total is None or self.total_sq is None:
            self.total, self.total_sq = wide.sum(0), (wide * wide).sum(0)
        else:
            self.total += wide.sum(0)
            self.total_sq += (wide * wide).sum(0)
        del wide
        if self.chunk_rows is not None:  # only a fit that reduces needs the sample
            self._sample(rows)
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        self.rows += rows.shape[0]
        self.peak_rows = max(self.peak_rows, self.pending_rows + self.kept_rows)
        if self.chunk_rows is not None and self.pending_rows > self.chunk_rows:
            self._reduce_pending()

    def _sample(self, rows: torch.Tensor) -> None:
        """Keep each row seen so far in the sample with the same chance (Vitter's algorithm R)."""
        if self.sample is None:
            self.sample = torch.empty(PCA_SAMPLE_ROWS, rows.shape[1])
        fill = min(rows.shape[0], PCA_SAMPLE_ROWS - self.sampled)
        self.sample[self.sampled : self.sampled + fill] = rows[:fill]
        self.sampled += fill
        rest = rows.shape[0] - fill
        if rest <= 0:
            return
        seen = torch.arange(self.rows + fill + 1, self.rows + rows.shape[0] + 1, dtype=torch.float64)
        slots = (torch.rand(rest, generator=self.generator, dtype=torch.float64) * seen).long()
        taken = torch.nonzero(slots < PCA_SAMPLE_ROWS).squeeze(1)
        if taken.numel():  # of rows drawn for one slot, the last one stays, as one by one
            order = slots[taken].numpy()[::-1]
            _, last = np.unique(order, return_index=True)
            taken = taken[torch.from_numpy(len(order) - 1 - last)]
            self.sample[slots[taken]] = rows[fill + taken]

    def _sample_rows(self) -> torch.Tensor:
        assert self.sample is not None
        return self.sample[: self.sampled]

    def scales(self) -> torch.Tensor:
        if self.total is None or self.total_sq is None:
            raise ValueError("no rows")
        return scales_from_sums(self.rows, self.total, self.total_sq, self.widths)

    def _column_scales(self) -> torch.Tensor:
        return torch.repeat_interleave(self.scales(), torch.tensor(self.widths))

    def _reduced(self, chunks: list[torch.Tensor], share: int, most: int | None = None) -> torch.Tensor:
        """The rows of `chunks` a bank for `share` rows could take: `keep` × its coreset fraction
        (at most `most`)."""
        count = math.ceil(self.keep * self.config.coreset_fraction * share)
        count = count if most is None else min(count, most)
        return _coreset_bank(
            chunks, self.config, count=count, column_scales=self._column_scales(), sample=self._sample_rows()
        )

    def _reduce_pending(self) -> None:
        kept = self._reduced(self.pending, self.pending_rows)
        self.pending, self.pending_rows = [], 0
        self.kept.append(kept)
        self.kept_rows += kept.shape[0]
        self.reductions += 1
        assert self.chunk_rows is not None
        if self.kept_rows > self.chunk_rows:  # the union outgrew a chunk: to half a chunk at most
            union = self._reduced(self.kept, self.rows, most=self.chunk_rows // 2)
            self.kept, self.kept_rows = [union], union.shape[0]

    def finish(
        self, progress: Callable[[int, int], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The bank (scaled rows), the level scales and the final selection's seconds."""
        if not self.rows:
            raise ValueError("no rows")
        chunks = self.kept + self.pending
        self.kept, self.pending = [], []
        scales = self.scales()
        _scale_levels(chunks, scales, self.widths)
        # reduced: the projection is the principal axes of a sample of every row, not of the union
        sample = self._sample_rows() * self._column_scales() if self.reductions else None
        started = time.perf_counter()
        count = max(1, round(self.config.coreset_fraction * self.rows))
        bank = _coreset_bank(chunks, self.config, progress, count=count, sample=sample)
        return bank, scales, time.perf_counter() - started


def _gather(chunks: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Rows of the chunks' concatenation, by global index, without concatenating them."""
    offsets = np.cumsum([0] + [c.shape[0] for c in chunks])
    owner = torch.from_numpy(np.searchsorted(offsets, rows.numpy(), side="right") - 1)
    out = torch.empty(rows.shape[0], chunks[0].shape[1], dtype=chunks[0].dtype)
    for index in owner.unique().tolist():
        mine = owner == index
        out[mine] = chunks[index][rows[mine] - int(offsets[index])]
    return out
