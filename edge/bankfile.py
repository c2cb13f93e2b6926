"""A bank file's container, read and verified without torch: safetensors arrays plus JSON metadata.

The engine (`edge.engine.artifact`) writes and loads models; this module is what lighter programs
need of the same file — edge-view's bank panel and a rollback from it read versions' calibration
records and verify a version before making it active — with numpy and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from edge.errors import ArtifactError
from edge.files import write_bytes_atomic

FORMAT = "edge.patchcore"
FORMAT_VERSION = 1
TENSORS = ("bank", "level_scales")
# a version's regions drawn on edge-view ({"frame", "regions", "by", "utc", "based_on"}): they take
# the place of the station file's for its recipe, and later calibrations carry them on
DRAWN_REGIONS = "drawn_regions"


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the tensors' names and bytes, in TENSORS order."""
    digest = hashlib.sha256()
    for name in TENSORS:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def write_bank_file(path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically (the engine's models, and a bank store's copies of a version
    with other metadata: regions drawn on edge-view); returns the path."""
    arrays = {name: np.ascontiguousarray(arrays[name]) for name in TENSORS}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "meta": json.dumps(meta, sort_keys=True),
        "checksum": checksum(arrays),
    }
    target = Path(path)
    write_bytes_atomic(target, save(arrays, metadata=header))
    return target


def read_bank_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A model file's metadata and arrays, verified (format, checksum, bank shape); every defect
    is an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as handle:
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
            arrays = {name: handle.get_tensor(name) for name in TENSORS}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is truncated or corrupted: {exc}") from None
    if checksum(arrays) != header.get("checksum"):
        raise ArtifactError(f"{path} is corrupted: its checksum does not match its contents")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} has unreadable metadata: {exc}") from None
    bank = arrays["bank"]
    if bank.dtype != np.float32 or bank.ndim != 2 or list(bank.shape) != meta.get("bank_shape"):
        raise ArtifactError(f"{path}: bank {tuple(bank.shape)} {bank.dtype} does not match its metadata")
    return meta, arrays
