"""Exact nearest-neighbour search against the memory bank, behind one interface.

`TorchIndex` tiles the bank so each distance block stays in cache and keeps a running minimum;
it runs unchanged on a GPU (pass a CUDA device). `FaissIndex` wraps faiss's flat L2 index.
Both return L2 distances (not squared) and bank row indices.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

BANK_TILE = 1024
QUERY_TILE = 1024


class NearestNeighbourIndex(Protocol):
    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) queries → (n, k) L2 distances ascending and (n, k) int64 bank rows."""
        ...


class TorchIndex:
    """Brute-force search as tiled matrix products (the CPU default by measurement; GPU-ready)."""

    def __init__(self, bank: torch.Tensor, device: str | torch.device = "cpu") -> None:
        self.bank_t = bank.to(device=device, dtype=torch.float32).T.contiguous()
        self.bank_norms = (self.bank_t * self.bank_t).sum(0)
        self.device = torch.device(device)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(device=self.device, dtype=torch.float32)
        if queries.shape[0] <= QUERY_TILE:
            return self._search_tile(queries, k)
        parts = [
            self._search_tile(queries[s : s + QUERY_TILE], k) for s in range(0, queries.shape[0], QUERY_TILE)
        ]
        return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])

    def _search_tile(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        query_norms = (queries * queries).sum(1, keepdim=True)
        best_d: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        rows = self.bank_t.shape[1]
        for start in range(0, rows, BANK_TILE):
            block = torch.addmm(
                self.bank_norms[None, start : start + BANK_TILE],
                queries,
                self.bank_t[:, start : start + BANK_TILE],
                alpha=-2,
            )
            if k == 1:
                values, indices = block.min(1, keepdim=True)
            else:
                values, indices = torch.topk(block, min(k, block.shape[1]), dim=1, largest=False)
            indices = indices + start
            if best_d is None:
                best_d, best_i = values, indices
            elif k == 1:
                better = values < best_d
                best_d = torch.where(better, values, best_d)
                best_i = torch.where(better, indices, best_i)
            else:
                merged_d = torch.cat([best_d, values], 1)
                merged_i = torch.cat([best_i, indices], 1)
                best_d, order = torch.topk(merged_d, min(k, merged_d.shape[1]), dim=1, largest=False)
                best_i = torch.gather(merged_i, 1, order)
        assert best_d is not None and best_i is not None
        return (best_d + query_norms).clamp_(min=0).sqrt_(), best_i


class FaissIndex:
    """faiss IndexFlatL2 (exact); CPU only here."""

    def __init__(self, bank: torch.Tensor) -> None:
        import faiss

        array = np.ascontiguousarray(bank.detach().cpu().numpy(), dtype=np.float32)
        self.index = faiss.IndexFlatL2(array.shape[1])
        self.index.add(array)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        distances, indices = self.index.search(array, k)
        return torch.from_numpy(np.sqrt(np.maximum(distances, 0))), torch.from_numpy(indices)


def build_index(bank: torch.Tensor, backend: str, device: str = "cpu") -> NearestNeighbourIndex:
    if backend == "faiss":
        return FaissIndex(bank)
    return TorchIndex(bank, device)
