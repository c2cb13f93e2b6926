"""Nearest-neighbour search against the memory bank, behind one interface.

- `ProjectedIndex` (`projected`, the CPU default): each query's few best candidates on the bank's
  256 principal axes, then those candidates' full distances in fp32. Its products cost 256/472 of
  the exact search's; it returns the true nearest row for at least 99.96 % of patches on the real
  sets (against float64 brute force; 128 axes fell to 99.1 % on KolektorSDD) and, for the rest, the exact
  distance to a row at most a few per cent farther (docs/engine.md).
- `TorchIndex` (`exact`, the GPU default): distances as tiled matrix products on centred data with
  a running best per query; runs unchanged on a GPU. Its `bf16` precision, the default where the
  processor multiplies bf16 natively, finds each query's few best candidates with bf16 products
  and then measures those exactly in fp32, directly as ||q - b||: on MVTec bottle and screw the
  candidates always held the true nearest neighbour.
- `FaissIndex` (`faiss`) wraps faiss's flat L2 index (exact).

All return L2 distances (not squared) and bank row indices.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

BANK_TILE = 4096  # bank rows per product: a 1 % bottle bank in one tile (no merging of candidates)
QUERY_TILE = 1024
# bf16 candidates measured exactly per query, beyond the k asked for: with 3 extra (4 for k = 1) every
# bottle test patch found its exact nearest neighbour (docs/engine.md)
EXTRA_CANDIDATES = 3
PRECISIONS = ("auto", "fp32", "bf16")
PROJECTED_AXES = 256  # recall >= 0.999 on the real sets; 128 axes: 0.991 on KolektorSDD (docs/engine.md)
PROJECTED_CANDIDATES = 4  # at 256 axes as fast as 6 at 128 (docs/engine.md, "Search")
# queries per product, in equal tiles: at most MAX_QUERY_TILE, and fewer where a tile's scores would
# pass SCORE_TILE values (7 MB in bf16), but not below MIN_QUERY_TILE. Measured (docs/engine.md,
# "Search"): a bottle frame (1,600 patches, 3,344 rows) in two tiles took 7.5 ms against 10.3 in
# tiles of 400; KolektorSDD (6,065 rows) scored batches of 8 in 28-30 ms per frame with tiles of
# 512 against 31-32 with 1,024; against 50,000 rows tiles of 128 took 118 ms where 512 took 171
MAX_QUERY_TILE = 1024
SCORE_TILE = 3_500_000
MIN_QUERY_TILE = 128
SELECTION_GROUP = 16  # bank rows per group in smallest_columns
FAR = 1e30  # the projected norm of padding rows: finite (no inf x 0 in a product), never near


class NearestNeighbourIndex(Protocol):
    name: str  # what runs: exact, projected or faiss

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) queries → (n, k) L2 distances ascending and (n, k) int64 bank rows."""
        ...


@cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":  # tensor cores; the candidates are measured exactly in fp32 anyway
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class TorchIndex:
    """Brute-force search as tiled matrix products (exact; the GPU default)."""

    name = "exact"

    def __init__(
        self, bank: torch.Tensor, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.bank = bank.to(device=self.device, dtype=torch.float32).contiguous()
        self.centre = self.bank.mean(0)  # centring shrinks the norms that cancel in |q|² + |b|² - 2q·b
        centred = self.bank - self.centre
        self.norms = (centred * centred).sum(1)
        product_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.bank_t = centred.T.contiguous().to(product_dtype)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(device=self.device, dtype=torch.float32)
        k = min(k, self.bank.shape[0])
        parts = [
            self._search_tile(queries[s : s + QUERY_TILE], k) for s in range(0, queries.shape[0], QUERY_TILE)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])

    def _search_tile(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        centred = queries - self.centre
        if self.precision == "fp32":
            scores, rows = self._best(centred, k)
            distances = (scores + (centred * centred).sum(1, keepdim=True)).clamp_(min=0).sqrt_()
            return distances, rows
        wanted = min(k + EXTRA_CANDIDATES, self.bank.shape[0])
        _, candidates = self._best(centred.to(torch.bfloat16), wanted)
        rows = self.bank.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)  # 3x faster
        exact = torch.linalg.vector_norm(rows.sub_(queries[:, None, :]), dim=2)  # than bank[candidates]
        distances, order = torch.topk(exact, k, dim=1, largest=False)
        return distances, torch.gather(candidates, 1, order)

    def _best(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest |b|² - 2q·b per query (ascending) and their rows, tile by tile."""
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for start in range(0, self.bank_t.shape[1], BANK_TILE):
            products = torch.mm(queries, self.bank_t[:, start : start + BANK_TILE]).float()
            block = products.mul_(-2).add_(self.norms[None, start : start + BANK_TILE])
            if k == 1:
                values, indices = block.min(1, keepdim=True)
            else:
                values, indices = torch.topk(block, min(k, block.shape[1]), dim=1, largest=False)
            indices += start
            if best_s is None or best_i is None:
                best_s, best_i = values, indices
            elif k == 1:
                better = values < best_s
                best_s = torch.where(better, values, best_s)
                best_i = torch.where(better, indices, best_i)
            else:
                merged_s, merged_i = torch.cat([best_s, values], 1), torch.cat([best_i, indices], 1)
                best_s, order = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1, largest=False)
                best_i = torch.gather(merged_i, 1, order)
        assert best_s is not None and best_i is not None
        return best_s, best_i


class ProjectedIndex:
    """Approximate search that measures exactly: each query's `candidates` best bank rows on the
    bank's top principal axes (products in bf16 where the CPU multiplies bf16 natively), then
    those candidates' full distances in fp32 as ||q - b||. A returned distance is always the exact
    distance to a real bank row; it is the nearest one unless the true nearest row was not among
    the candidates (recall at least 0.9996 on the real sets, printed by
    `bench/bench_engine.py`; docs/engine.md). The products cost axes / D of the exact search's."""

    name = "projected"

    def __init__(
        self,
        bank: torch.Tensor,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        axes: int = PROJECTED_AXES,
        candidates: int = PROJECTED_CANDIDATES,
    ) -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.candidates = candidates
        self.bank = bank.to(device=self.device, dtype=torch.float32).contiguous()
        self.centre = self.bank.mean(0)
        centred = self.bank - self.centre
        self.axes = bank_axes(centred, axes)
        projected = centred @ self.axes
        self.centre_projected = self.centre @ self.axes  # queries are projected uncentred, then moved
        # one product gives |b|² - 2q·b: the bank side holds -2b (exact in bf16) and |b|² as one more
        # row, the query side a 1; the columns are padded to whole selection groups with rows
        # that are never near (zero, at a norm no real row has)
        padding = -projected.shape[0] % SELECTION_GROUP
        norms = torch.cat([(projected * projected).sum(1), projected.new_full((padding,), FAR)])
        sides = torch.cat([projected * -2, projected.new_zeros(padding, projected.shape[1])])
        self.product_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.axes_product = self.axes.to(self.product_dtype)
        self.bank_side = torch.cat([sides.T, norms[None]]).contiguous().to(self.product_dtype)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(device=self.device, dtype=torch.float32)
        k = min(k, self.bank.shape[0])
        wanted = min(k + self.candidates, self.bank.shape[0])
        distances = torch.empty(queries.shape[0], k, device=self.device)
        rows = torch.empty(queries.shape[0], k, dtype=torch.int64, device=self.device)
        for start, stop in query_tiles(queries.shape[0], self.bank_side.shape[1]):
            chunk = queries[start:stop]
            projected = torch.mm(chunk.to(self.product_dtype), self.axes_product).float()
            query_side = torch.cat(
                [projected.sub_(self.centre_projected), projected.new_ones(len(chunk), 1)], 1
            )
            scores = torch.mm(query_side.to(self.product_dtype), self.bank_side)  # |b|² - 2q·b
            candidates = smallest_columns(scores, wanted)
            found = self.bank.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)
            exact = torch.linalg.vector_norm(found.sub_(chunk[:, None, :]), dim=2)
            if k == 1:  # min is cheaper than topk (4 % of the search on bottle)
                best, order = exact.min(1, keepdim=True)
            else:
                best, order = torch.topk(exact, k, dim=1, largest=False)
            distances[start:stop] = best
            rows[start:stop] = torch.gather(candidates, 1, order)
        return distances, rows


def query_tiles(queries: int, bank_columns: int) -> list[tuple[int, int]]:
    """(start, stop) of equal query tiles of at most MAX_QUERY_TILE queries whose scores hold at
    most SCORE_TILE values (but at least MIN_QUERY_TILE queries): no ragged last tile."""
    most = min(MAX_QUERY_TILE, max(MIN_QUERY_TILE, SCORE_TILE // max(bank_columns, 1)))
    count = max(1, -(-queries // most))
    size = -(-queries // count)
    return [(start, min(start + size, queries)) for start in range(0, queries, size)]


def smallest_columns(scores: torch.Tensor, count: int, group: int = SELECTION_GROUP) -> torch.Tensor:
    """The columns of each row's `count` smallest values, in no order: the set torch.topk gives,
    about 3x faster on the CPU. Columns j, j + G, j + 2G, ... (G = columns / group) form a group;
    value-only minima over groups are vectorised, and the `count` smallest values lie in the
    `count` groups with the smallest minima. `scores` has a multiple of `group` columns."""
    rows, columns = scores.shape
    groups = columns // group
    if columns % group or groups <= count:
        return torch.topk(scores, count, dim=1, largest=False, sorted=False).indices
    minima = scores.view(rows, group, groups).amin(1)
    chosen = torch.topk(minima, count, dim=1, largest=False, sorted=False).indices  # (rows, count)
    members = (chosen[:, :, None] + torch.arange(group, device=scores.device) * groups).reshape(rows, -1)
    picked = torch.topk(scores.gather(1, members), count, dim=1, largest=False, sorted=False).indices
    return members.gather(1, picked)


def bank_axes(centred: torch.Tensor, count: int) -> torch.Tensor:
    """(D, count) principal axes of centred bank rows (all of them when `count` >= D)."""
    count = min(count, centred.shape[1])
    _, axes = torch.linalg.eigh((centred.T @ centred).double())  # ascending eigenvalues
    return axes[:, -count:].flip(1).to(centred.dtype).contiguous()


class FaissIndex:
    """faiss IndexFlatL2 (exact); CPU only here."""

    name = "faiss"

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        array = np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32)
        self.index = faiss.IndexFlatL2(array.shape[1])
        self.index.add(array)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        distances, indices = self.index.search(array, k)
        return torch.from_numpy(np.sqrt(np.maximum(distances, 0))), torch.from_numpy(indices)


def reference_distances(bank: torch.Tensor, queries: torch.Tensor, tile: int = 256) -> torch.Tensor:
    """Each query's nearest-row L2 distance by brute force in float64 on centred data: the
    reference a search's recall is measured against (the fp32 expansion |q|² + |b|² - 2q·b that
    the exact search uses itself misses bottle's true nearest row for 0.07 % of patches)."""
    bank64 = bank.detach().cpu().double()
    centre = bank64.mean(0)
    bank64 = bank64 - centre
    norms = (bank64 * bank64).sum(1)
    parts = []
    for start in range(0, queries.shape[0], tile):
        chunk = queries[start : start + tile].detach().cpu().double() - centre
        squared = (chunk * chunk).sum(1, keepdim=True) + norms[None] - 2 * chunk @ bank64.T
        parts.append(squared.amin(1).clamp_(min=0).sqrt_())
    return torch.cat(parts)


def build_index(
    bank: torch.Tensor, backend: str = "auto", device: str = "cpu", precision: str = "auto"
) -> NearestNeighbourIndex:
    """The index `backend` names; `auto` is `projected` on the CPU and `exact` on a GPU (where the
    exact products cost little)."""
    if backend == "auto":
        backend = "exact" if torch.device(device).type == "cuda" else "projected"
    if backend == "faiss":
        return FaissIndex(bank)
    if backend == "projected":
        return ProjectedIndex(bank, device, precision)
    return TorchIndex(bank, device, precision)
