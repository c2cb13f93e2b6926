"""Embeddings spooled to disk come back exactly, in any order put; a spool that cannot be
written is an ArtifactError naming where; frames read from files on demand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edge.engine.spool import EmbeddingSpool
from edge.errors import ArtifactError, ImageError
from edge.imageio import ImageFiles


def test_embeddings_come_back_bit_for_bit_in_any_order(tmp_path):
    generator = torch.Generator().manual_seed(0)
    embeddings = [torch.randn(h, w, 8, generator=generator) for h, w in ((3, 4), (5, 2), (1, 1))]
    with EmbeddingSpool(3, tmp_path) as spool:
        for position in (2, 0, 1):
            spool.put(position, embeddings[position])
        assert len(spool) == 3 and spool.rows() == 12 + 10 + 1
        for got, want in zip(spool, embeddings, strict=True):
            assert torch.equal(got, want) and got.dtype == torch.float32
        assert [tuple(e.shape) for e in spool[1:]] == [(5, 2, 8), (1, 1, 8)]
        spool[0].zero_()  # a fresh tensor each read: the spool's copy is untouched
        assert torch.equal(spool[0], embeddings[0])
    assert not list(tmp_path.iterdir())  # unlinked from the start


def test_a_position_never_put_is_an_index_error(tmp_path):
    with EmbeddingSpool(2, tmp_path) as spool:
        spool.put(0, torch.zeros(1, 1, 4))
        with pytest.raises(IndexError, match="position 1"):
            spool[1]


def test_a_spool_that_cannot_be_written_names_where(tmp_path):
    with pytest.raises(ArtifactError, match=r"cannot spool embeddings in .*missing"):
        EmbeddingSpool(1, tmp_path / "missing")


def test_image_files_read_each_frame_when_asked(tmp_path):
    paths = []
    for value in (10, 200):
        path = tmp_path / f"{value}.png"
        cv2.imwrite(str(path), np.full((4, 6), value, np.uint8))
        paths.append(path)
    frames = ImageFiles(paths)
    assert len(frames) == 2 and int(frames[1][0, 0]) == 200
    assert isinstance(frames[:1], ImageFiles) and len(frames[:1]) == 1
    paths[0].unlink()
    with pytest.raises(ImageError, match="cannot read image"):
        frames[0]
