"""Search time per image against bank rows, as a line's bank grows: the projected search (the CPU
default), the exact one, and candidates from a graph index (faiss HNSW) or from inverted lists
(faiss IVF, `--probes`) measured exactly, on real patches, printed as a table.

    python bench/calibration_set.py --out /tmp/edge-calib --frames 2500
    python bench/bench_search_scale.py /tmp/edge-calib --rows 3000 10000 20000 50000

The bank is fitted once on the set's good frames (`--fit-chunk-rows`, so the fit stays small) and
cached beside the set; each size is a seeded random subset of its rows. The queries are every patch
of 20 test frames. Recall: the share of queries whose returned distance is the true nearest one
(float64 brute force, within 1e-4 relative). Times: the median of 3 passes over the 20 frames, per frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge.engine.artifact import load_model, save_model
from edge.engine.config import EngineConfig
from edge.engine.model import PatchCore
from edge.engine.search import ProjectedIndex, TorchIndex, reference_distances
from edge.imageio import read_image
from edge.memory import tune_allocator

HNSW_NEIGHBOURS = 32
HNSW_CANDIDATES = 8


def bank_of(root: Path, frames: int, chunk_rows: int) -> PatchCore:
    cached = root / f"bench-bank-{frames}.edge"
    if cached.exists():
        return load_model(cached)
    paths = sorted((root / "train" / "good").glob("*.png"))[:frames]
    model = PatchCore.fit((read_image(p) for p in paths), EngineConfig(fit_chunk_rows=chunk_rows))
    save_model(model, cached)
    return model


def queries_of(model: PatchCore, root: Path) -> list[torch.Tensor]:
    """Each test frame's patches, scaled as scoring scales them."""
    frames = []
    for path in sorted((root / "test" / "good").glob("*.png"))[:20]:
        prepared = model._prepare(read_image(path))
        embeddings = model.extractor(np.stack([prepared.pixels])) * model.column_scales
        frames.append(embeddings.reshape(-1, embeddings.shape[-1]).float().cpu())
    return frames


class HnswCandidates:
    """faiss HNSW's best rows per query, their distances then measured exactly (as the projected
    search measures its candidates)."""

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        self.bank = bank.contiguous()
        self.index = faiss.IndexHNSWFlat(bank.shape[1], HNSW_NEIGHBOURS)
        self.index.hnsw.efConstruction = 80
        started = time.perf_counter()
        self.index.add(np.ascontiguousarray(bank.numpy()))
        self.build_s = time.perf_counter() - started

    def with_ef(self, ef: int) -> Callable:
        def search(queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
            self.index.hnsw.efSearch = ef
            return self.search(queries, k)

        return search

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        _, found = self.index.search(np.ascontiguousarray(queries.numpy()), HNSW_CANDIDATES)
        candidates = torch.from_numpy(found).clamp_(min=0)
        rows = self.bank.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)
        exact = torch.linalg.vector_norm(rows.sub_(queries[:, None, :]), dim=2)
        best, order = torch.topk(exact, k, dim=1, largest=False)
        return best, torch.gather(candidates, 1, order)


class InvertedLists:
    """faiss IVF-flat: the bank clustered into 4 sqrt(rows) lists, each query's nearest row among
    the rows of its `probes` nearest lists (distances exact: the lists hold the full rows)."""

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        array = np.ascontiguousarray(bank.numpy())
        self.lists = int(4 * bank.shape[0] ** 0.5)
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(bank.shape[1]), bank.shape[1], self.lists)
        started = time.perf_counter()
        self.index.train(array)
        self.index.add(array)
        self.build_s = time.perf_counter() - started

    def with_probes(self, probes: int) -> Callable:
        def search(queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
            self.index.nprobe = probes
            squared, rows = self.index.search(np.ascontiguousarray(queries.numpy()), k)
            return torch.from_numpy(np.sqrt(np.maximum(squared, 0))), torch.from_numpy(rows)

        return search


def timed(search: Callable, frames: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Median ms per frame over 3 passes, and the distances of the last pass."""
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        found = [search(frame)[0][:, 0] for frame in frames]
        passes.append((time.perf_counter() - started) * 1000 / len(frames))
    return statistics.median(passes), torch.cat(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a set bench/calibration_set.py wrote")
    parser.add_argument("--rows", type=int, nargs="+", default=[3000, 10000, 20000, 50000])
    parser.add_argument("--fit-frames", type=int, default=2500)
    parser.add_argument("--fit-chunk-rows", type=int, default=262144)
    parser.add_argument(
        "--ef", type=int, nargs="*", default=[32, 64], help="HNSW efSearch values (none: no HNSW)"
    )
    parser.add_argument(
        "--probes", type=int, nargs="*", default=[], help="IVF lists probed per query (none: no IVF)"
    )
    args = parser.parse_args()
    tune_allocator()
    model = bank_of(args.root, args.fit_frames, args.fit_chunk_rows)
    frames = queries_of(model, args.root)
    bank = model.bank.float().cpu()
    print(f"bank of {bank.shape[0]} rows ({args.fit_frames} frames); {sum(len(f) for f in frames)} query "
          f"patches in {len(frames)} frames; ms per frame, median of 3 passes")  # fmt: skip
    print(f"{'rows':>7} {'search':<22} {'ms/frame':>9} {'recall':>8}")
    order = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(0))
    for size in args.rows:
        if size > bank.shape[0]:
            print(f"{size:>7} (the bank has {bank.shape[0]} rows)")
            continue
        subset = bank[order[:size]].contiguous()
        exact = torch.cat([reference_distances(subset, frame) for frame in frames])
        searches: list[tuple[str, Callable]] = [
            ("exact (fp32)", TorchIndex(subset, "cpu", "fp32").search),
            ("projected (default)", ProjectedIndex(subset).search),
        ]
        if args.ef:
            graph = HnswCandidates(subset)
            print(f"{size:>7} (hnsw built in {graph.build_s:.1f} s)")
            for ef in args.ef:
                searches.append((f"hnsw ef={ef} + exact", graph.with_ef(ef)))
        if args.probes:
            lists = InvertedLists(subset)
            print(f"{size:>7} (ivf of {lists.lists} lists built in {lists.build_s:.1f} s)")
            for probes in args.probes:
                searches.append((f"ivf probes={probes}", lists.with_probes(probes)))
        searches.append(("projected 128x6 (before)", ProjectedIndex(subset, axes=128, candidates=6).search))
        for name, search in searches:
            ms, found = timed(search, frames)
            recall = float((found <= exact * (1 + 1e-4) + 1e-6).float().mean())
            print(f"{size:>7} {name:<22} {ms:>9.1f} {recall:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
