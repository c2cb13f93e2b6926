"""Greedy k-center coreset selection (minimax facility location) on a random projection.

The classic loop updates every point's distance to the coreset after each pick: a matrix-vector
product over all N points per pick, memory-bound and slow. This implementation returns the same
picks with matrix-matrix products: it keeps the `pool` points with the largest distances as
candidates. Distances only ever shrink, so while the best candidate still beats the largest
distance outside the pool (`bound`), it is the true argmax. Picks are applied to the pool at once
and to all N points lazily, in one batched product per refresh. Memory stays O(N).
"""

from __future__ import annotations

import torch

PROJECTION_SEED_OFFSET = 7919  # keeps the projection's random stream apart from the start point's


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Gaussian Johnson-Lindenstrauss matrix, or None when the features are already small enough."""
    if dim_out >= dim_in:
        return None
    generator = torch.Generator().manual_seed(seed + PROJECTION_SEED_OFFSET)
    return torch.randn(dim_in, dim_out, generator=generator) / dim_out**0.5


def _squared_distances(points: torch.Tensor, norms: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    centre_norms = (centres * centres).sum(1)
    return torch.addmm(norms[:, None] + centre_norms[None, :], points, centres.T, alpha=-2).clamp_(min=0)


def _lower_min_distances(
    points: torch.Tensor,
    norms: torch.Tensor,
    centres: torch.Tensor,
    min_distances: torch.Tensor,
    block_elements: int = 1 << 22,
) -> None:
    """min_distances = min(min_distances, distance to any of `centres`), in 16 MB blocks."""
    chunk = max(256, block_elements // centres.shape[0])
    for start in range(0, points.shape[0], chunk):
        stop = start + chunk
        nearest = _squared_distances(points[start:stop], norms[start:stop], centres).amin(1)
        torch.minimum(min_distances[start:stop], nearest, out=min_distances[start:stop])


def greedy_coreset(points: torch.Tensor, count: int, seed: int = 0, pool: int = 8192) -> torch.Tensor:
    """Indices of `count` points chosen by greedy k-center, deterministic for `seed`.

    `points` (N, d) should already be projected. The first centre is a seeded random point.
    """
    total = points.shape[0]
    if not 0 < count <= total:
        raise ValueError(f"cannot choose {count} of {total} points")
    if count == total:
        return torch.arange(total)
    points = points.float().contiguous()
    norms = (points * points).sum(1)
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(total, (1,), generator=generator))
    chosen = [first]
    min_distances = _squared_distances(points, norms, points[first : first + 1])[:, 0]
    pool = min(pool, total)
    while len(chosen) < count:
        values, candidates = torch.topk(min_distances, pool, sorted=False)
        outside = min_distances.clone()
        outside[candidates] = -1.0
        bound = float(outside.max()) if pool < total else -1.0
        del outside
        candidate_points = points[candidates]
        candidate_norms = norms[candidates]
        picked: list[int] = []
        while len(chosen) < count:
            best = int(torch.argmax(values))
            if float(values[best]) < bound:
                break  # a point outside the pool may now be farther: refresh
            index = int(candidates[best])
            chosen.append(index)
            picked.append(index)
            distances = _squared_distances(candidate_points, candidate_norms, points[index : index + 1])
            torch.minimum(values, distances[:, 0], out=values)
        if picked:
            _lower_min_distances(points, norms, points[picked], min_distances)
    return torch.tensor(chosen, dtype=torch.long)
