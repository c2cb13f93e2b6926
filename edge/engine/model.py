"""PatchCore: a fitted model, and scoring new images with it.

Building the bank is bank.py's (scales, coreset) and embedding.py's (same-size batches); this
module fits by running both, batches images for scoring, keeps results in input order, and
records what the fitted model is (for the artifact). Scoring is batched on the model's device:
per micro-batch of same-size inputs one upload (uint8 pixels), one search over all their patches,
eq. 7 from a neighbour table built once per bank, and one download (image scores and patch-grid
distances); the maps are then made on the host at the network input's size.
"""

from __future__ import annotations

import itertools
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
from edge.engine.backbones import build_backbone
from edge.engine.bank import BankBuilder, TrainingSummary
from edge.engine.config import EngineConfig
from edge.engine.embedding import embed_images, embed_stream, model_extractor, position_batches
from edge.engine.extractors import Extractor, synchronize, torch_device
from edge.engine.features import column_scales
from edge.engine.geometry import Placement, map_to_frame, place, prepare
from edge.engine.input_geometry import AUTO_SAMPLE
from edge.engine.scoring import anomaly_map, map_peak, neighbour_table, patches_reaching, reweighting_factors
from edge.engine.search import build_index
from edge.errors import ImageError, UsageError


class StageTimer:
    """Accumulates wall time per named stage (for benchmarks and the eval report). With a CUDA
    device it synchronises before each reading, so a stage's time is its own and not the queue's;
    the timer that does nothing (the default) never synchronises."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device is not None:
            synchronize(self.device)


_NO_TIMER = StageTimer()


@dataclass
class ImageResult:
    """One image's outcome. Distances are L2 (not squared) in embedding space."""

    score: float  # image score: the smoothed map's peak (map_max) or the eq.-7 reweighted largest distance
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


class PatchCore:
    """A fitted PatchCore model: backbone, memory bank and everything needed to score."""

    def __init__(
        self,
        config: EngineConfig,
        extractor: Extractor,
        bank: torch.Tensor,
        level_scales: torch.Tensor,
        info: dict[str, Any],
    ):
        self.config = config
        self.extractor = extractor
        self.info = info
        self.device = extractor.device
        if bank.ndim != 2 or bank.shape[1] != extractor.dim:
            raise UsageError(
                f"bank of shape {tuple(bank.shape)} does not fit backbone {extractor.spec.name} "
                f"(embedding width {extractor.dim})"
            )
        self.level_scales = level_scales.float().cpu()
        self.column_scales = column_scales(self.level_scales, extractor.widths).to(self.device)
        self.bank = bank.to(self.device, torch.float32).contiguous()
        self.index = build_index(self.bank, config.search, str(self.device), config.search_precision)
        self._neighbours: torch.Tensor | None = None  # eq. 7's support rows per bank row, on first use

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
        extractor = model_extractor(config, build_backbone(config.backbone, weights, random_weights))
        summary = TrainingSummary()
        started = time.perf_counter()
        stream = iter(images)
        head = list(itertools.islice(stream, AUTO_SAMPLE))  # an `auto` geometry is decided by these
        if not head:
            raise UsageError("no training images: a bank needs at least one good image")
        config = config.resolved([image.shape[:2] for image in head])

        def counted() -> Iterator[np.ndarray]:
            for image in itertools.chain(head, stream):
                summary.add(image)
                yield image

        builder = BankBuilder(config, extractor.widths)  # with fit_chunk_rows: bounded memory
        for embeddings in embed_stream(extractor, config, counted()):
            for embedding in embeddings:  # one image's rows at a time, as the level scales always summed
                builder.add(embedding.reshape(-1, embedding.shape[-1]).cpu())
            if progress is not None:
                progress(len(embeddings))
        extract_s = time.perf_counter() - started
        fitted = cls._from_builder(builder, config, extractor, {"training": summary.to_dict()})
        fitted.info["timings"]["extract_s"] = extract_s
        return fitted

    @classmethod
    @torch.inference_mode()
    def from_embeddings(
        cls,
        chunks: Iterable[torch.Tensor],
        config: EngineConfig,
        extractor: Extractor,
        info: dict[str, Any],
        coreset_progress: Callable[[int, int], None] | None = None,
        chunk_progress: Callable[[int], None] | None = None,
    ) -> PatchCore:
        """Fit on unscaled patch embeddings (rows of width D; scaled in place): level scales, coreset.
        `chunks` may be a stream: with `fit_chunk_rows`, memory stays bounded however long it is.

        `coreset_progress` is called with (rows picked, rows to pick) while the coreset is chosen,
        `chunk_progress` with the number of chunks reduced so far after each reduction."""
        builder = BankBuilder(config, extractor.widths)
        for chunk in chunks:
            reductions = builder.reductions
            builder.add(chunk)
            if chunk_progress is not None and builder.reductions != reductions:
                chunk_progress(builder.reductions)
        return cls._from_builder(builder, config, extractor, info, coreset_progress)

    @classmethod
    def _from_builder(
        cls,
        builder: BankBuilder,
        config: EngineConfig,
        extractor: Extractor,
        info: dict[str, Any],
        coreset_progress: Callable[[int, int], None] | None = None,
    ) -> PatchCore:
        if not builder.rows:
            raise UsageError("no training images: a bank needs at least one good image")
        if config.geometry.mode == "auto":
            raise UsageError("resolve an auto geometry (EngineConfig.resolved) before embedding")
        rows, reductions = builder.rows, builder.reductions
        bank, scales, coreset_s = builder.finish(coreset_progress)
        info = {
            "edge_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            **info,
            "total_patches": rows,
            "bank_reductions": reductions,
            "timings": {"coreset_s": coreset_s},
        }
        return cls(config, extractor, bank, scales, info)

    # ---- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self,
        images: Sequence[np.ndarray],
        timer: StageTimer | None = None,
        judged: Sequence[np.ndarray | None] | None = None,
    ) -> list[ImageResult]:
        """Score images (any sizes, any mix); results come back in input order.

        An image's numbers do not depend on the batch it came in: images are batched only with
        others of the same input size, and every patch is searched on its own. `judged` (per
        image, a boolean mask in its input geometry, or None for all) names the pixels whose map
        values matter: patches that cannot reach them are not searched and score 0, and the map
        at the judged pixels is what a full search gives.
        """
        timer = timer or _NO_TIMER
        with timer.stage("preprocess"):
            prepared = [self._prepare(image) for image in images]
        results: list[ImageResult | None] = [None] * len(prepared)
        for positions in position_batches([item.pixels.shape for item in prepared], self.config.batch_size):
            with timer.stage("extract"):
                embeddings = self.extractor(np.stack([prepared[p].pixels for p in positions]))
            searched = None
            if judged is not None and any(judged[p] is not None for p in positions):
                grid_hw = (embeddings.shape[1], embeddings.shape[2])
                masks = [judged[p] for p in positions]
                searched = np.stack(
                    [np.ones(grid_hw, bool) if m is None else patches_reaching(m, grid_hw) for m in masks]
                )
            scores, max_distances, grids = self._score_batch(embeddings * self.column_scales, timer, searched)
            with timer.stage("map"):
                for row, position in enumerate(positions):
                    placement = prepared[position].placement
                    amap = anomaly_map(grids[row], placement.input_hw)
                    results[position] = ImageResult(
                        self._image_score(float(scores[row]), grids[row]),
                        float(max_distances[row]),
                        amap,
                        placement,
                    )
        return [r for r in results if r is not None]

    def _score_batch(
        self, embeddings: torch.Tensor, timer: StageTimer, searched: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, h, w, D) scaled embeddings on the device → image scores, largest patch distances
        and (n, h, w) patch distances, brought to the host in one transfer. With `searched`
        ((n, h, w) bool), only those patches are searched; the others' distances are 0."""
        n, grid_h, grid_w, dim = embeddings.shape
        patches = embeddings.reshape(n, grid_h * grid_w, dim)
        with timer.stage("search"):
            if searched is None:
                found, nearest_rows = self.index.search(patches.reshape(-1, dim), k=1)
                distances = found[:, 0].to(self.device).reshape(n, -1)
                rows = nearest_rows[:, 0].to(self.device).reshape(n, -1)
            else:
                chosen = torch.from_numpy(searched.reshape(n, -1)).to(self.device)
                distances = torch.zeros(n, grid_h * grid_w, device=self.device)
                rows = torch.zeros(n, grid_h * grid_w, dtype=torch.int64, device=self.device)
                if bool(chosen.any()):
                    found, nearest_rows = self.index.search(patches[chosen], k=1)
                    distances[chosen] = found[:, 0].to(self.device)
                    rows[chosen] = nearest_rows[:, 0].to(self.device)
            max_distances, worst = distances.max(1)
            scores = max_distances.double()
            if self.config.reweight and self.config.image_score == "eq7":
                nearest = rows.gather(1, worst[:, None])[:, 0]
                worst_patches = patches[torch.arange(n, device=self.device), worst]
                scores = scores * reweighting_factors(worst_patches, self.neighbours[nearest], self.bank)
            packed = torch.cat([scores[:, None], max_distances.double()[:, None], distances.double()], 1)
            host = packed.cpu().numpy()  # the batch's one device → host transfer
        return host[:, 0], host[:, 1], host[:, 2:].astype(np.float32).reshape(n, grid_h, grid_w)

    def _image_score(self, eq7_score: float, grid: np.ndarray) -> float:
        if self.config.image_score == "map_max":
            return map_peak(grid, self.extractor.spec.level_strides[0])
        return eq7_score

    @property
    def neighbours(self) -> torch.Tensor:
        """(rows, k) eq. 7 support per bank row: itself, then its k - 1 nearest other bank rows."""
        if self._neighbours is None:
            self._neighbours = neighbour_table(self.bank, self.index, self.config.reweight_neighbours)
        return self._neighbours

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Unscaled (h, w, D) patch embeddings of each image, in input order, on the CPU: computed
        once, they can fit several banks (calibration's folds) and be scored by each."""
        return embed_images(self.extractor, self.config, images)

    @torch.inference_mode()
    def image_scores(self, embeddings: Sequence[torch.Tensor]) -> list[float]:
        """Image scores (eq. 7) of unscaled embeddings from `embed`, without anomaly maps."""
        return [score for score, _ in self.patch_scores(embeddings)]

    def patch_scores(self, embeddings: Sequence[torch.Tensor]) -> list[tuple[float, np.ndarray]]:
        """Each image's score and its (h, w) patch distances (what `anomaly_map` smooths), from
        unscaled embeddings from `embed`."""
        scores: list[tuple[float, np.ndarray] | None] = [None] * len(embeddings)
        for chunk in position_batches([e.shape for e in embeddings], self.config.batch_size):
            batch = torch.stack([embeddings[p] for p in chunk]).to(self.device) * self.column_scales
            values, _, grids = self._score_batch(batch, _NO_TIMER)
            for position, value, grid in zip(chunk, values, grids, strict=True):
                scores[position] = (self._image_score(float(value), grid), grid)
        return [s for s in scores if s is not None]

    def warm_up(self, input_hw: tuple[int, int] | None = None, batches: Sequence[int] = (1,)) -> None:
        """First-call set-up before any part waits: the extractor's batch buckets, the search and
        eq. 7's table, on the input size this model's geometry gives (or `input_hw`)."""
        geometry = self.config.geometry
        if input_hw is None:
            input_hw = geometry.fixed_input_hw or self._usual_input_hw()
        for batch in batches:
            embeddings = self.extractor(np.zeros((batch, *input_hw, 3), np.uint8))
            self._score_batch(embeddings * self.column_scales, _NO_TIMER)
        synchronize(self.device)

    def usual_frame_hw(self) -> tuple[int, int] | None:
        """The bank's most common training frame size (what the line sends), if recorded."""
        sizes = self.info.get("training", {}).get("frame_sizes", {})
        try:
            width, height = (int(v) for v in max(sizes, key=sizes.get).split("x"))
        except (ValueError, TypeError):
            return None
        return height, width

    def _usual_input_hw(self) -> tuple[int, int]:
        """The input size of the usual training frame (whole-frame modes: it depends on the frame)."""
        frame_hw = self.usual_frame_hw()
        try:
            if frame_hw is not None:
                return self.placement(frame_hw).input_hw
        except ImageError:  # a roi this frame size cannot hold
            pass
        side = self.config.geometry.resize
        return side, side

    def placement(self, frame_hw: tuple[int, int]) -> Placement:
        """Where a frame of this size goes in; ImageError (`shape: ...`) for a frame this model
        refuses (ROI outside it, or a shape whose cost is unbounded). Cheap: no pixels are read."""
        return place(frame_hw, self.config.geometry)

    # ---- shared plumbing -----------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> _Prepared:
        pixels, placement = prepare(image, self.config.geometry)
        return _Prepared(pixels, placement)

    def metadata(self) -> dict[str, Any]:
        """What the model is, for the artifact and reports."""
        spec = self.extractor.spec
        return {
            "config": self.config.to_dict(),
            "backbone": {
                "name": spec.name,
                "weights_id": self.extractor.weights_id,
                "random_weights": self.extractor.random_weights,
                "level_channels": list(spec.level_channels),
                "level_strides": list(spec.level_strides),
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            "embedding_dim": int(self.bank.shape[1]),
            "level_widths": list(self.extractor.widths),
            "level_scales": self.level_scales.tolist(),
            "bank_shape": list(self.bank.shape),
            **self.info,
        }
