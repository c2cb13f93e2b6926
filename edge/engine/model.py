"""PatchCore orchestration: fitting a memory bank from good images and scoring new ones.

The pure compute lives in features / coreset / search / scoring; this module batches images,
keeps results in input order, and records what the fitted model is (for the artifact).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from edge import __version__
from edge.engine.backbones import Backbone, build_backbone
from edge.engine.config import EngineConfig
from edge.engine.coreset import greedy_coreset, random_projection
from edge.engine.features import PatchEmbedder, equal_variance_scales
from edge.engine.geometry import Placement, map_to_frame, place, prepare
from edge.engine.scoring import anomaly_map, reweighting_factor
from edge.engine.search import build_index
from edge.errors import UsageError


class StageTimer:
    """Accumulates wall time per named stage (for benchmarks and the eval report)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


_NO_TIMER = StageTimer()


@dataclass
class ImageResult:
    """One image's outcome. Distances are L2 (not squared) in embedding space."""

    score: float  # image score: the largest patch distance, eq.-7 reweighted when enabled
    max_patch_distance: float
    anomaly_map: np.ndarray  # float32, the network input's geometry
    placement: Placement = field(repr=False)

    def frame_map(self, fill: float = 0.0) -> np.ndarray:
        """The anomaly map laid back on the original frame (pixels never inspected get `fill`)."""
        return map_to_frame(self.anomaly_map, self.placement, fill)


@dataclass
class _Prepared:
    pixels: np.ndarray
    placement: Placement


class _TrainingSummary:
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


def torch_device(name: str) -> torch.device:
    """The torch device `name` names, or UsageError when it cannot run here (no traceback)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {name!r} asked for, but no CUDA GPU is usable here (no NVIDIA driver or GPU, "
                "or a CPU build of torch); use --device cpu"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


class PatchCore:
    """A fitted PatchCore model: backbone, memory bank and everything needed to score."""

    def __init__(
        self,
        config: EngineConfig,
        backbone: Backbone,
        bank: torch.Tensor,
        level_scales: torch.Tensor,
        info: dict[str, Any],
    ):
        self.config = config
        self.backbone = backbone
        self.info = info
        self.device = torch_device(config.device)
        self.embedder = PatchEmbedder(backbone, level_scales).to(self.device).eval()
        if bank.ndim != 2 or bank.shape[1] != self.embedder.dim:
            raise UsageError(
                f"bank of shape {tuple(bank.shape)} does not fit backbone {backbone.spec.name} "
                f"(embedding width {self.embedder.dim})"
            )
        self.bank = bank.to(self.device, torch.float32).contiguous()
        self.index = build_index(self.bank, config.search, config.device, config.search_precision)

    @property
    def threshold(self) -> float | None:
        """The verdict threshold chosen at calibration (stored with the bank), if any."""
        value = self.info.get("calibration", {}).get("threshold")
        return float(value) if value is not None else None

    def calibrate(self, record: dict[str, Any]) -> None:
        """Attach a calibration record (threshold and how it was chosen); saved with the bank."""
        if not (isinstance(record.get("threshold"), float) and record["threshold"] > 0):
            raise ValueError(f"a calibration record needs a positive float threshold, got {record}")
        self.info["calibration"] = record

    # ---- fitting -------------------------------------------------------------------------------
    @classmethod
    @torch.inference_mode()
    def fit(
        cls,
        images: Iterable[np.ndarray],
        config: EngineConfig,
        weights: str | None = None,
        random_weights: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PatchCore:
        """Fit a bank on good images (any sizes; greyscale or RGB uint8).

        `progress` is called with the number of images done after each batch.
        """
        torch_device(config.device)
        backbone = build_backbone(config.backbone, weights, random_weights)
        model = cls.extractor(config, backbone)
        summary = _TrainingSummary()
        started = time.perf_counter()

        def counted() -> Iterator[np.ndarray]:
            for image in images:
                summary.add(image)
                yield image

        chunks: list[torch.Tensor] = []
        for embeddings in model._embed_batches(counted()):
            chunks.extend(e.reshape(-1, e.shape[-1]).cpu() for e in embeddings)
            if progress is not None:
                progress(len(embeddings))
        extract_s = time.perf_counter() - started
        fitted = cls.from_embeddings(chunks, config, backbone, {"training": summary.to_dict()})
        fitted.info["timings"]["extract_s"] = extract_s
        return fitted

    @classmethod
    def extractor(cls, config: EngineConfig, backbone: Backbone) -> PatchCore:
        """A model with an empty bank: it embeds images (embed) but cannot score them."""
        dim = sum(backbone.spec.level_widths)
        return cls(config, backbone, torch.zeros(1, dim), torch.ones(len(backbone.spec.level_widths)), {})

    @classmethod
    @torch.inference_mode()
    def from_embeddings(
        cls, chunks: list[torch.Tensor], config: EngineConfig, backbone: Backbone, info: dict[str, Any]
    ) -> PatchCore:
        """Fit on unscaled patch embeddings (rows of width D; scaled in place): level scales, coreset."""
        if not chunks:
            raise UsageError("no training images: a bank needs at least one good image")
        widths = tuple(backbone.spec.level_widths)
        scales = equal_variance_scales(chunks, widths)
        _scale_levels(chunks, scales, widths)
        started = time.perf_counter()
        bank = _coreset_bank(chunks, config)
        info = {
            "edge_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            **info,
            "total_patches": sum(c.shape[0] for c in chunks),
            "timings": {"coreset_s": time.perf_counter() - started},
        }
        return cls(config, backbone, bank, scales, info)

    # ---- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray], timer: StageTimer | None = None) -> list[ImageResult]:
        """Score images (any sizes, any mix); results come back in input order.

        An image's numbers do not depend on the batch it came in: images are only batched with
        others of the same input size, and every image is searched on its own.
        """
        timer = timer or _NO_TIMER
        with timer.stage("preprocess"):
            prepared = [self._prepare(image) for image in images]
        results: list[ImageResult | None] = [None] * len(prepared)
        for positions in self._batches_by_shape(prepared):
            embeddings = self._embed([prepared[p].pixels for p in positions], timer)
            for position, embedding in zip(positions, embeddings, strict=True):
                results[position] = self._score_one(embedding, prepared[position].placement, timer)
        return [r for r in results if r is not None]

    def _score_one(self, embedding: torch.Tensor, placement: Placement, timer: StageTimer) -> ImageResult:
        grid_h, grid_w, dim = embedding.shape
        score, max_distance, distances = self._image_score(embedding.reshape(-1, dim), timer)
        with timer.stage("map"):
            amap = anomaly_map(distances.reshape(grid_h, grid_w).numpy(), placement.input_hw)
        return ImageResult(score, max_distance, amap, placement)

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Unscaled (h, w, D) patch embeddings of each image, in input order, on the CPU: computed
        once, they can fit several banks (calibration's folds) and be scored by each."""
        prepared = [self._prepare(image) for image in images]
        out: list[torch.Tensor | None] = [None] * len(prepared)
        for positions in self._batches_by_shape(prepared):
            embeddings = self._embed([prepared[p].pixels for p in positions], scaled=False).cpu()
            for position, embedding in zip(positions, embeddings, strict=True):
                out[position] = embedding
        return [e for e in out if e is not None]

    @torch.inference_mode()
    def image_scores(self, embeddings: Sequence[torch.Tensor]) -> list[float]:
        """Image scores (eq. 7) of unscaled embeddings from `embed`, without anomaly maps."""
        column_scales = torch.repeat_interleave(
            self.embedder.level_scales.cpu(), torch.tensor(self.embedder.widths)
        )
        scores = []
        for embedding in embeddings:
            patches = (embedding.reshape(-1, embedding.shape[-1]) * column_scales).to(self.device)
            scores.append(self._image_score(patches, _NO_TIMER)[0])
        return scores

    def _image_score(self, patches: torch.Tensor, timer: StageTimer) -> tuple[float, float, torch.Tensor]:
        """(image score, largest patch distance, every patch's distance) for one image's patches."""
        with timer.stage("search"):
            distances, rows = self.index.search(patches, k=1)
            distances = distances[:, 0].cpu()
            worst = int(torch.argmax(distances))
            max_distance = float(distances[worst])
            score = max_distance
            if self.config.reweight:
                score *= reweighting_factor(
                    patches[worst],
                    int(rows[worst, 0]),
                    self.bank,
                    self.index,
                    self.config.reweight_neighbours,
                )
        return score, max_distance, distances

    def placement(self, frame_hw: tuple[int, int]) -> Placement:
        """Where a frame of this size goes in; ImageError (`shape: ...`) for a frame this model
        refuses (ROI outside it, or a shape whose cost is unbounded). Cheap: no pixels are read."""
        return place(frame_hw, self.config.geometry)

    # ---- shared plumbing -----------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> _Prepared:
        pixels, placement = prepare(image, self.config.geometry)
        return _Prepared(pixels, placement)

    def _batches_by_shape(self, prepared: Sequence[_Prepared]) -> Iterator[list[int]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for position, item in enumerate(prepared):
            groups[item.pixels.shape].append(position)
        size = self.config.batch_size
        for positions in groups.values():
            for start in range(0, len(positions), size):
                yield positions[start : start + size]

    @torch.inference_mode()
    def _embed(
        self, pixels: Sequence[np.ndarray], timer: StageTimer = _NO_TIMER, scaled: bool = True
    ) -> torch.Tensor:
        """Same-size uint8 HxWx3 inputs → (n, h, w, D) patch embeddings."""
        with timer.stage("preprocess"):
            batch = torch.from_numpy(np.stack(pixels)).to(self.device)
            x = self.embedder.normalise(batch)
        with timer.stage("backbone"):
            levels = self.embedder.levels(x)
        with timer.stage("aggregation"):
            return self.embedder.aggregate(levels, scaled=scaled)

    def _embed_batches(self, images: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Embed a stream of images in same-size batches without holding the stream in memory."""
        pending: dict[tuple[int, ...], list[np.ndarray]] = defaultdict(list)
        for image in images:
            pixels = self._prepare(image).pixels
            group = pending[pixels.shape]
            group.append(pixels)
            if len(group) == self.config.batch_size:
                yield self._embed(group, scaled=False)
                group.clear()
        for group in pending.values():
            if group:
                yield self._embed(group, scaled=False)

    def metadata(self) -> dict[str, Any]:
        """What the model is, for the artifact and reports."""
        spec = self.backbone.spec
        return {
            "config": self.config.to_dict(),
            "backbone": {
                "name": spec.name,
                "weights_id": self.backbone.weights_id,
                "random_weights": self.backbone.random_weights,
                "level_channels": list(spec.level_channels),
                "level_strides": list(spec.level_strides),
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            "embedding_dim": int(self.bank.shape[1]),
            "level_widths": list(self.embedder.widths),
            "level_scales": self.embedder.level_scales.tolist(),
            "bank_shape": list(self.bank.shape),
            **self.info,
        }


def _scale_levels(chunks: list[torch.Tensor], scales: torch.Tensor, widths: tuple[int, ...]) -> None:
    column_scales = torch.repeat_interleave(scales, torch.tensor(widths))
    for chunk in chunks:
        chunk.mul_(column_scales)


def _coreset_bank(chunks: list[torch.Tensor], config: EngineConfig) -> torch.Tensor:
    """Select the coreset rows from per-batch feature chunks without concatenating them all."""
    total = sum(c.shape[0] for c in chunks)
    count = max(1, round(config.coreset_fraction * total))
    if count >= total:
        return torch.cat(chunks)
    projection = random_projection(chunks[0].shape[1], config.projection_dim, config.seed)
    if projection is None:
        projected = torch.cat(chunks)
    else:  # filled in place: a list of projected chunks plus their concatenation would double it
        projected = torch.empty(total, projection.shape[1])
        start = 0
        for chunk in chunks:
            torch.mm(chunk, projection, out=projected[start : start + chunk.shape[0]])
            start += chunk.shape[0]
    chosen = greedy_coreset(projected, count, config.seed)
    del projected
    offsets = np.cumsum([0] + [c.shape[0] for c in chunks])
    owner = np.searchsorted(offsets, chosen.numpy(), side="right") - 1
    return torch.stack([chunks[o][i - offsets[o]] for o, i in zip(owner, chosen.tolist(), strict=True)])
