"""Patch embeddings spooled to disk and read back one image at a time.

A calibration fits a bank per held-out fold and one final bank from the same embeddings. Held in
memory they grow with the good frames (2,000 KolektorSDD-size frames: 8.6 GB in fp32); spooled,
the process holds one image's at a time and each fold reads them back. fp32, so a spooled
calibration gives the numbers of one held in memory. The file is unlinked at creation: nothing is
left behind by a crash.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch

from edge.errors import ArtifactError


class EmbeddingSpool(Sequence[torch.Tensor]):
    """`count` images' embeddings, put in any order by position, read back as fresh fp32 tensors."""

    def __init__(self, count: int, directory: Path | None = None) -> None:
        self.directory = directory or Path(tempfile.gettempdir())
        try:
            self._file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ArtifactError(f"cannot spool embeddings in {self.directory}: {exc}") from None
        self._where: list[tuple[int, tuple[int, ...]] | None] = [None] * count

    def put(self, position: int, embedding: torch.Tensor) -> None:
        array = np.ascontiguousarray(embedding.detach().cpu().numpy(), dtype=np.float32)
        try:
            offset = self._file.seek(0, os.SEEK_END)
            self._file.write(array.tobytes())
            self._file.flush()  # a full disk is said here, not at a later read
        except OSError as exc:
            raise ArtifactError(f"cannot spool embeddings in {self.directory}: {exc}") from None
        self._where[position] = (offset, array.shape)

    def __len__(self) -> int:
        return len(self._where)

    @overload
    def __getitem__(self, position: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, position: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, position: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(position, slice):
            return [self[p] for p in range(*position.indices(len(self)))]
        where = self._where[position]
        if where is None:
            raise IndexError(f"no embedding was put at position {position}")
        offset, shape = where
        array = np.empty(shape, np.float32)
        try:
            self._file.seek(offset)
            read = self._file.readinto(array.data.cast("B"))
        except OSError as exc:
            raise ArtifactError(f"cannot read spooled embeddings in {self.directory}: {exc}") from None
        if read != array.nbytes:
            raise ArtifactError(f"spooled embeddings in {self.directory} were cut short")
        return torch.from_numpy(array)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[p] for p in range(len(self)))

    def rows(self) -> int:
        """Patch rows of every embedding put so far."""
        return sum(math.prod(where[1][:-1]) for where in self._where if where is not None)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EmbeddingSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
