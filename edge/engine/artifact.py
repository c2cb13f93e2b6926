"""The fitted model as one file: safetensors arrays plus JSON metadata, no pickle anywhere.

Layout: tensors `bank` (rows x width, float32) and `level_scales` (float32); the safetensors
header's metadata holds `format`, `format_version` and `meta` (JSON: configuration, backbone and
weights hash, levels, geometry, coreset settings, bank shape, eq.-7 settings, creation time,
training summary) and `checksum` (SHA-256 over the tensors' bytes). Written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from edge.engine.backbones import build_backbone
from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.extractors import default_cache_dir
from edge.engine.model import PatchCore, model_extractor
from edge.errors import ArtifactError, EdgeError
from edge.files import write_bytes_atomic

FORMAT = "edge.patchcore"
FORMAT_VERSION = 1
TENSORS = ("bank", "level_scales")
RUNTIME_SETTINGS = (
    "device",
    "search",
    "search_precision",
    "batch_size",
    "extractor",
    "extractor_precision",
)  # may differ between fitting and scoring


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in TENSORS:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name].detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def save_model(model: PatchCore, path: str | os.PathLike) -> Path:
    """Write `model` to `path` atomically; returns the path."""
    tensors = {
        "bank": model.bank.detach().cpu().contiguous(),
        "level_scales": model.level_scales.detach().cpu().contiguous(),
    }
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "meta": json.dumps(model.metadata(), sort_keys=True),
        "checksum": _checksum(tensors),
    }
    target = Path(path)
    write_bytes_atomic(target, save(tensors, metadata=metadata))
    return target


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a model file's metadata and tensors; every defect is an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != FORMAT:
                raise ArtifactError(f"{path} is not an edge model file (format {header.get('format')!r})")
            if header.get("format_version") != str(FORMAT_VERSION):
                raise ArtifactError(
                    f"{path} has format version {header.get('format_version')}; this edge "
                    f"reads version {FORMAT_VERSION}: refit the model"
                )
            missing = [n for n in TENSORS if n not in handle.keys()]  # noqa: SIM118 - safe_open has no __contains__
            if missing:
                raise ArtifactError(f"{path} lacks tensors {missing}")
            tensors = {name: handle.get_tensor(name) for name in TENSORS}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is truncated or corrupted: {exc}") from None
    if _checksum(tensors) != header.get("checksum"):
        raise ArtifactError(f"{path} is corrupted: its checksum does not match its contents")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} has unreadable metadata: {exc}") from None
    bank = tensors["bank"]
    if bank.dtype != torch.float32 or bank.ndim != 2 or list(bank.shape) != meta.get("bank_shape"):
        raise ArtifactError(f"{path}: bank {tuple(bank.shape)} {bank.dtype} does not match its metadata")
    return meta, tensors


def _config_from(meta: dict[str, Any], overrides: dict[str, Any]) -> EngineConfig:
    try:
        raw = dict(meta["config"])
        raw["geometry"] = InputGeometry(
            **{k: tuple(v) if k == "roi" and v else v for k, v in raw["geometry"].items()}
        )
        raw.setdefault("image_score", "eq7")  # banks from before map_max were thresholded on eq. 7
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
    info = {
        k: meta[k]
        for k in ("edge_version", "created_utc", "training", "total_patches", "timings", "calibration")
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
