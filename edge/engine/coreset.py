"""Greedy k-center coreset selection (minimax facility location) on a projection of the features.

The textbook loop updates every point's distance to the coreset after every pick: N × count × d
multiply-adds in matrix-vector products, memory-bound (bottle at 320²: 143 G). This implementation
returns the same picks lazily, with about a sixth of that work in matrix-matrix products:

- every point keeps an upper bound on its distance to the coreset (its distance to the centres it
  has been compared with so far) and how many centres, in pick order, that covers;
- a round takes the `pool` points with the largest bounds; every other point is at most `bound`,
  the largest bound left outside;
- the pool is brought up to date in blocks of centres; a point whose distance falls below `bound`
  stops there (it cannot be picked this round), and the centres it skipped wait until it is a
  candidate again, which most points never are;
- the pool's up-to-date points are then picked from while the best beats `bound`, so each pick is
  the true argmax. Memory stays O(N).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

PROJECTION_SEED_OFFSET = 7919  # keeps the projection's random stream apart from the start point's
BLOCK_ELEMENTS = 1 << 18  # distance blocks of 1 MB stay in cache


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Gaussian Johnson-Lindenstrauss matrix, or None when the features are already small enough."""
    if dim_out >= dim_in:
        return None
    generator = torch.Generator().manual_seed(seed + PROJECTION_SEED_OFFSET)
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


def principal_projection(sample: torch.Tensor, dim_out: int) -> torch.Tensor | None:
    """The `dim_out` principal axes of a sample of the features (d, dim_out), or None when small.

    Of all projections to `dim_out` values, this one keeps the most of the features' spread, so
    distances in it are the closest to the full ones that any linear map of that width gives.
    A float32 `sample` is centred in place: an ensemble's sample is hundreds of MB.
    """
    if dim_out >= sample.shape[1]:
        return None
    centred = sample.float()
    if not bool(torch.isfinite(centred).all()):
        raise ValueError("coreset points must be finite")  # as greedy_coreset says, before eigh fails
    centred -= centred.mean(0)
    _, axes = torch.linalg.eigh((centred.T @ centred).double())  # ascending eigenvalues
    return axes[:, -dim_out:].flip(1).float().contiguous()


def _lower(
    values: torch.Tensor, rows: torch.Tensor, centres: torch.Tensor, centre_norms: torch.Tensor
) -> None:
    """values = min(values, squared distance of each row to its nearest centre), in cached blocks.

    |r - c|² = |r|² + (|c|² - 2 r·c): the row's norm is added after the minimum over centres.
    """
    chunk = max(64, BLOCK_ELEMENTS // centres.shape[0])
    for start in range(0, rows.shape[0], chunk):
        block = rows[start : start + chunk]
        nearest = torch.addmm(centre_norms[None, :], block, centres.T, alpha=-2).amin(1)
        nearest += (block * block).sum(1)
        target = values[start : start + chunk]
        torch.minimum(target, nearest.clamp_(min=0), out=target)


@dataclass
class _Coverage:
    """Per-point upper bounds on the squared distance to the coreset, and the centres so far."""

    points: torch.Tensor
    bounds: torch.Tensor  # (N,) squared distance to the first `seen` centres
    seen: torch.Tensor  # (N,) int64
    centres: torch.Tensor  # (count, d), filled in pick order
    centre_norms: torch.Tensor
    chosen: torch.Tensor
    size: int = 0

    @classmethod
    def start(cls, points: torch.Tensor, count: int, first: int) -> _Coverage:
        total, dim = points.shape
        coverage = cls(
            points=points,
            bounds=torch.full((total,), float("inf")),
            seen=torch.ones(total, dtype=torch.long),
            centres=torch.empty(count, dim),
            centre_norms=torch.empty(count),
            chosen=torch.empty(count, dtype=torch.long),
        )
        coverage.add(first)
        _lower(coverage.bounds, points, coverage.centres[:1], coverage.centre_norms[:1])
        return coverage

    def add(self, index: int) -> torch.Tensor:
        point = self.points[index]
        self.chosen[self.size] = index
        self.centres[self.size] = point
        self.centre_norms[self.size] = point.dot(point)
        self.size += 1
        return point

    def largest(self, pool: int) -> tuple[torch.Tensor, float]:
        """The `pool` points with the largest bounds, and the largest bound of the rest."""
        total = self.bounds.shape[0]
        if pool >= total:
            return torch.arange(total), -1.0
        bounds = self.bounds.numpy()
        order = np.argpartition(bounds, total - pool - 1)  # numpy's is ~6× faster than torch.topk here
        return torch.from_numpy(order[total - pool :]), float(bounds[order[total - pool - 1]])

    def refresh(self, candidates: torch.Tensor, bound: float, centre_block: int) -> torch.Tensor:
        """Bring candidates up to date in blocks of centres; stop each once it drops below `bound`.

        Returns the candidates that are up to date and still at least `bound`.
        """
        values = self.bounds[candidates]
        seen = self.seen[candidates]
        alive = seen < self.size
        if bool(alive.any()):
            first = int(seen[alive].min()) // centre_block * centre_block
            for begin in range(first, self.size, centre_block):
                end = min(self.size, begin + centre_block)
                rows = (alive & (seen < end)).nonzero()[:, 0]
                if rows.numel() == 0:
                    continue
                row_values, block = values[rows], slice(begin, end)
                points = self.points[candidates[rows]]
                _lower(row_values, points, self.centres[block], self.centre_norms[block])
                values[rows] = row_values
                seen[rows] = end  # blocks are aligned, so every earlier centre was applied before
                alive[rows] = row_values >= bound
        self.bounds[candidates] = values
        self.seen[candidates] = seen
        return candidates[(values >= bound) & (seen == self.size)]

    def pick_within(self, live: torch.Tensor, bound: float, count: int) -> None:
        """Greedy picks among `live` (all up to date) while the best beats everything outside."""
        values = self.bounds[live]
        rows = self.points[live]
        row_norms = (rows * rows).sum(1)
        while self.size < count:
            best = int(torch.argmax(values))
            if float(values[best]) < bound:
                break  # a point outside may now be farther: next round
            point = self.add(int(live[best]))
            distances = torch.addmv(row_norms, rows, point, alpha=-2).add_(point.dot(point))
            torch.minimum(values, distances, out=values)
        self.bounds[live] = values
        self.seen[live] = self.size


def greedy_coreset(
    points: torch.Tensor,
    count: int,
    seed: int = 0,
    pool: int = 8192,
    centre_block: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Indices of `count` points chosen by greedy k-center, deterministic for `seed`.

    `points` (N, d) should already be projected. The first centre is a seeded random point.
    `progress` is called with (picked, count) after each round: a large bank takes tens of seconds.
    """
    total = points.shape[0]
    if not 0 < count <= total:
        raise ValueError(f"cannot choose {count} of {total} points")
    if count == total:
        return torch.arange(total)
    points = points.float().cpu().contiguous()  # the selection runs on the CPU (numpy partition)
    if not bool(torch.isfinite(points).all()):
        raise ValueError("coreset points must be finite")  # NaN compares false: no pick would end
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(total, (1,), generator=generator))
    coverage = _Coverage.start(points, count, first)
    while coverage.size < count:
        candidates, bound = coverage.largest(pool)
        live = coverage.refresh(candidates, bound, centre_block)
        if live.numel():
            coverage.pick_within(live, bound, count)
            if progress is not None:
                progress(coverage.size, count)
    return coverage.chosen
