"""Images to patch embeddings in same-size batches: the one batching rule that fitting, scoring and
calibration share, so that an image's numbers never depend on which of them embedded it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from edge.engine.backbones import Backbone
from edge.engine.config import EngineConfig
from edge.engine.extractors import Extractor, build_extractor
from edge.engine.geometry import prepare

T = TypeVar("T")


def batches_by_shape(items: Iterable[T], shape_of: Callable[[T], Hashable], size: int) -> Iterator[list[T]]:
    """Batches of at most `size` items of one shape, each shape's items in their order: a batch
    goes out when full (so a stream is never held whole), the partial ones at the end."""
    pending: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        group = pending[shape_of(item)]
        group.append(item)
        if len(group) == size:
            yield list(group)
            group.clear()
    yield from (group for group in pending.values() if group)


def position_batches(shapes: Sequence[Hashable], size: int) -> Iterator[list[int]]:
    """The positions of `shapes` in batches of one shape (batches_by_shape over positions)."""
    return batches_by_shape(range(len(shapes)), shapes.__getitem__, size)


def model_extractor(config: EngineConfig, backbone: Backbone, cache_dir: Any = None) -> Extractor:
    """The extractor a model of this configuration runs (its one input size, where fixed)."""
    return build_extractor(
        backbone,
        config.extractor,
        config.device,
        input_hw=config.geometry.fixed_input_hw,
        cache_dir=cache_dir,
        precision=config.extractor_precision,
    )


def embed_images(
    extractor: Extractor,
    config: EngineConfig,
    images: Sequence[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Unscaled (h, w, D) embeddings of each image on the CPU, in input order; `progress` is
    called with (images done, images) after each batch."""
    out: list[torch.Tensor | None] = [None] * len(images)
    embed_into(out.__setitem__, extractor, config, images, progress)
    return [e for e in out if e is not None]


def embed_into(
    sink: Callable[[int, torch.Tensor], None],
    extractor: Extractor,
    config: EngineConfig,
    images: Sequence[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
    seen: Callable[[np.ndarray], None] | None = None,
) -> None:
    """Embed `images` in same-size batches (position_batches' rule), handing each (position,
    unscaled (h, w, D) CPU embedding) to `sink` as its batch completes: no more than one batch
    per input size is held, so `images` may read each from disk as it is asked for (once; `seen`
    is given each image as it is read, so nothing else need read them again)."""

    def read(position: int) -> np.ndarray:
        image = images[position]
        if seen is not None:
            seen(image)
        return image

    prepared = ((p, prepare(read(p), config.geometry)[0]) for p in range(len(images)))
    done = 0
    for batch in batches_by_shape(prepared, lambda item: item[1].shape, config.batch_size):
        embeddings = extractor(np.stack([pixels for _, pixels in batch])).cpu()
        for (position, _), embedding in zip(batch, embeddings, strict=True):
            sink(position, embedding)
        done += len(batch)
        if progress is not None:
            progress(done, len(images))


def embed_stream(
    extractor: Extractor, config: EngineConfig, images: Iterable[np.ndarray]
) -> Iterator[torch.Tensor]:
    """Embed a stream of images in same-size batches without holding the stream in memory."""
    pixels = (prepare(image, config.geometry)[0] for image in images)
    for batch in batches_by_shape(pixels, lambda p: p.shape, config.batch_size):
        yield extractor(np.stack(batch))
