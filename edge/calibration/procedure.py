"""Calibration from good frames: screen them, keep them, fit a bank, choose its threshold, publish.

Frames are kept in the store under their content hash (frames/<sha256[:16]>.png, lossless) and
each bank version records the names of the frames it was fitted on, so `--add` extends the
active version's set without the line, and a calibration killed half-way leaves only unused
frame files behind: the active version is never touched until the new one is complete.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.bankstore import DRAWN_REGIONS, BankStore, active_drawn_regions
from edge.calibration.quality import FrameStats, screen
from edge.calibration.regions import RegionPeaks
from edge.calibration.threshold import ThresholdChoice, choose_threshold, held_out_scores
from edge.config import RECIPE_ENGINE_SETTINGS, CalibrationConfig
from edge.engine.artifact import read_artifact
from edge.engine.backbones import build_backbone
from edge.engine.bank import TrainingSummary
from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.embedding import embed_into, model_extractor
from edge.engine.extractors import Extractor
from edge.engine.input_geometry import AUTO_SAMPLE
from edge.engine.model import PatchCore
from edge.engine.spool import EmbeddingSpool
from edge.errors import ArtifactError, UsageError
from edge.files import write_bytes_atomic
from edge.imageio import ImageFiles, encode_png
from edge.recipe import Recipe

log = logging.getLogger("edge.calibrate")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class CalibrationResult:
    version: str
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def engine_config(recipe: CalibrationConfig) -> EngineConfig:
    """The engine settings of a recipe; an `auto` geometry is resolved later, from the frames."""
    if recipe.full_frame:
        geometry = InputGeometry.full_frame(224)
    else:
        geometry = InputGeometry.named(recipe.geometry, recipe.input_size)
    return EngineConfig(geometry=geometry, **{name: getattr(recipe, name) for name in RECIPE_ENGINE_SETTINGS})


def frame_name(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return f"{digest.hexdigest()[:16]}.png"


def keep_frame(store: BankStore, image: np.ndarray) -> str:
    """Store a frame losslessly under its content name (atomic; the same frame twice is one file)."""
    name = frame_name(image)
    path = store.frames_dir / name
    if not path.exists():
        png = encode_png(image)
        try:
            write_bytes_atomic(path, png)
        except OSError as exc:
            raise ArtifactError(
                f"cannot store frame {path}: {exc}; the active version is unchanged"
            ) from None
    return name


def active_record(store: BankStore) -> dict[str, Any]:
    """The active version's calibration record (frames, recipe, threshold)."""
    meta, _ = read_artifact(store.active().path)
    record = meta.get("calibration")
    if not record or "frames" not in record:
        raise ArtifactError(f"the active bank of {store.root} carries no calibration record to extend")
    return record


def _fit_and_choose(
    images: ImageFiles,
    embeddings: EmbeddingSpool,
    extractor: Extractor,
    config: EngineConfig,
    recipe: CalibrationConfig,
    progress: Progress,
    peaks: RegionPeaks | None = None,
) -> tuple[PatchCore, ThresholdChoice, np.ndarray]:
    """Embed the kept frames once (into the spool), score each from a bank that did not see it,
    choose the threshold, and fit the final bank from every frame: each step reads the spool
    back, so memory does not grow with the frames (bounded further by `fit_chunk_rows`)."""
    summary = TrainingSummary()  # taken as the frames are read for embedding: no second read
    embed_into(
        embeddings.put, extractor, config, images, lambda done, n: progress("embed", done, n), summary.add
    )
    progress("held-out scores", 0, 1)
    scores, method = held_out_scores(
        extractor,
        config,
        images,
        embeddings,
        recipe.folds,
        recipe.seed,
        progress=lambda done, total: progress("held-out scores", done, total),
        patches=peaks,
    )
    choice = choose_threshold(scores, recipe.target_frr, recipe.margin, method)
    progress("final bank", 0, 1)
    chunks_expected = max(1, embeddings.rows() // config.fit_chunk_rows) if config.fit_chunk_rows else 0
    model = PatchCore.from_embeddings(
        (e.reshape(-1, e.shape[-1]) for e in embeddings),
        config,
        extractor,
        {"training": summary.to_dict()},
        coreset_progress=lambda done, total: progress("final bank", done, total),
        chunk_progress=lambda done: progress("final bank chunks", done, max(done, chunks_expected)),
    )
    return model, choice, scores


def calibrate(
    store: BankStore,
    frames: Sequence[np.ndarray],
    recipe: CalibrationConfig,
    weights: str | None = None,
    add: bool = False,
    progress: Progress | None = None,
    activate: bool = True,
    candidates: list[dict[str, Any]] | None = None,
    regions: Recipe | None = None,
) -> CalibrationResult:
    """Screen `frames`, fit and publish a new version (fitted on the active version's frames too
    when `add`), with its threshold chosen on held-out good frames, and with `regions` (a product
    recipe that draws regions) one threshold per inspect region too. Returns what was done.

    `candidates`: when the frames are cleared rejects, their facts (one per frame, with `key`): the
    version records them, and their screening, and takes them out of the queue once it is active.
    `activate` false stages the version: written and reported, not yet scoring."""
    progress = progress or (lambda stage, done, total: None)
    kept: list[str] = []
    if add:
        previous = active_record(store)
        recipe = CalibrationConfig.model_validate(previous["recipe"])
        kept = list(previous["frames"])
    config = engine_config(recipe)
    backbone = build_backbone(config.backbone, weights)  # missing weights: said before any work
    reference = [FrameStats.of(image) for image in ImageFiles([store.frames_dir / name for name in kept])]
    stats = []
    for image in frames:
        stats.append(FrameStats.of(image))
        progress("screen frames", len(stats), len(frames))
    report = screen(stats, reference)
    for done, index in enumerate(report.accepted, 1):
        kept.append(keep_frame(store, frames[index]))
        progress("keep frames", done, len(report.accepted))
    if not report.accepted and add:
        raise UsageError(f"none of the {len(frames)} frames to add was accepted: {dict(report.rejected)}")
    if not kept:
        raise UsageError(f"no usable good frame among {len(frames)} collected: {dict(report.rejected)}")
    # from here on the kept frames are read from the store as needed, never held all at once
    kept_images = ImageFiles([store.frames_dir / name for name in kept])
    config = config.resolved([image.shape[:2] for image in kept_images[:AUTO_SAMPLE]])
    extractor = model_extractor(config, backbone)
    peaks = RegionPeaks(regions, kept_images) if regions is not None and regions.regions else None
    with EmbeddingSpool(len(kept_images), store.root) as embeddings:  # a full disk: ArtifactError
        model, choice, scores = _fit_and_choose(
            kept_images, embeddings, extractor, config, recipe, progress, peaks
        )
    record = {
        "threshold": float(choice.threshold),
        "choice": choice.to_dict(),
        "held_out_scores": [round(float(s), 6) for s in scores],
        "quality": report.to_dict(),
        "recipe": recipe.model_dump(),
        "frames": kept,
        "added": len(report.accepted) if add else None,
    }
    regions_record = None if peaks is None else peaks.choose(recipe.target_frr, recipe.margin, choice.method)
    if regions_record is not None:
        record["regions"] = regions_record
    if candidates is not None:
        record["candidates"] = [
            facts | {"refused": report.reasons.get(index)} for index, facts in enumerate(candidates)
        ]
    model.calibrate(record)
    drawn = active_drawn_regions(store.root)
    if drawn is not None:  # regions drawn on edge-view stay the recipe's through a new calibration
        model.info[DRAWN_REGIONS] = drawn
    version = store.publish(model, activate)
    for warning in choice.warnings:
        log.warning("%s", warning)
    return CalibrationResult(version, record, choice.warnings)
