"""The fitted model as one file: safetensors arrays plus JSON metadata, no pickle anywhere.

Layout: tensors `bank` (rows x width, float32) and `level_scales` (float32); the safetensors
header's metadata holds `format`, `format_version` and `meta` (JSON: configuration, backbone and
weights hash, levels, geometry, coreset settings, bank shape, eq.-7 settings, creation time,
training summary) and `checksum` (SHA-256 over the tensors' bytes). Written atomically.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from edge.bankfile import DRAWN_REGIONS, read_bank_file, write_bank_file
from edge.engine.backbones import build_backbone
from edge.engine.config import RUNTIME_SETTINGS, EngineConfig, InputGeometry
from edge.engine.embedding import model_extractor
from edge.engine.extractors import default_cache_dir
from edge.engine.model import PatchCore
from edge.errors import ArtifactError, EdgeError

CARRIED = ("edge_version", "created_utc", "training", "total_patches", "timings", "calibration")
"""What a model file's metadata holds beside the model itself, kept in `PatchCore.info`."""


def save_model(model: PatchCore, path: str | os.PathLike) -> Path:
    """Write `model` to `path` atomically; returns the path."""
    arrays = {
        "bank": model.bank.detach().cpu().numpy(),
        "level_scales": model.level_scales.detach().cpu().numpy(),
    }
    return write_bank_file(path, model.metadata(), arrays)


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a model file's metadata and tensors; every defect is an ArtifactError."""
    meta, arrays = read_bank_file(path)
    return meta, {name: torch.from_numpy(array) for name, array in arrays.items()}


def _config_from(meta: dict[str, Any], overrides: dict[str, Any]) -> EngineConfig:
    try:
        raw = dict(meta["config"])
        stored: dict[str, Any] = dict(raw["geometry"])
        if stored.get("roi"):
            stored["roi"] = tuple(stored["roi"])
        raw["geometry"] = InputGeometry(**stored)
        raw.setdefault("image_score", "eq7")  # banks from before map_max were thresholded on eq. 7
        raw.setdefault("projection", "random")  # the only projection before there was a choice
        known = {f.name for f in fields(EngineConfig)}
        unknown = set(raw) - known
        if unknown:
            raise ArtifactError(f"model file has settings this edge does not know: {sorted(unknown)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return EngineConfig(**raw)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"model file metadata is incomplete or malformed: {exc}") from None
    except EdgeError as exc:
        raise ArtifactError(f"model file holds invalid settings: {exc}") from None


def load_model(path: str | os.PathLike, weights: str | None = None, **runtime: Any) -> PatchCore:
    """Load a model file; `runtime` may set device, search and batch_size for this station."""
    bad = set(runtime) - set(RUNTIME_SETTINGS)
    if bad:
        raise TypeError(f"only {RUNTIME_SETTINGS} can be overridden at load time, not {sorted(bad)}")
    meta, tensors = read_artifact(path)
    config = _config_from(meta, runtime)
    stored = meta.get("backbone", {})
    backbone = build_backbone(config.backbone, weights, bool(stored.get("random_weights")))
    if backbone.weights_id != stored.get("weights_id"):
        raise ArtifactError(
            f"{path} was fitted on backbone weights {stored.get('weights_id')}, but this "
            f"station's {config.backbone} weights are {backbone.weights_id}: refit the model"
        )
    info: dict[str, Any] = {
        k: meta[k]
        for k in (
            "edge_version",
            "created_utc",
            "training",
            "total_patches",
            "timings",
            "calibration",
            DRAWN_REGIONS,
        )
        if k in meta
    }
    extractor = model_extractor(config, backbone, extractor_cache(Path(path)))
    return PatchCore(config, extractor, tensors["bank"], tensors["level_scales"], info)


def extractor_cache(path: Path) -> Path:
    """Exported extractor graphs: beside the banks in a bank store (`<store>/extractors/`, next to
    `versions/`) where it is writable, else the user's cache folder (EDGE_CACHE_DIR, systemd's
    CACHE_DIRECTORY or ~/.cache/edge). A loose model file never gets a folder beside it."""
    store = path.resolve().parent.parent
    if path.resolve().parent.name == "versions" and os.access(store, os.W_OK):
        return store / "extractors"
    return default_cache_dir()
