"""Locating and verifying backbone weight files. Nothing here downloads anything, ever."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from edge.errors import WeightsError

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class WeightsFile:
    """A weights file a backbone needs: its canonical name and the SHA-256 prefix it must have."""

    filename: str
    sha256_prefix: str
    description: str


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so a process hashes a file once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks for checkpoints offline: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def locate(spec: WeightsFile, explicit: str | os.PathLike | None) -> Path:
    """Return the verified path of `spec`: the explicit path if given, else the torch hub cache.

    Raises WeightsError with a paragraph that names the file and where to put it.
    """
    candidates = [Path(explicit)] if explicit else [hub_checkpoint_dir() / spec.filename]
    for path in candidates:
        if path.is_file():
            verify(path, spec)
            return path
    where = candidates[0]
    raise WeightsError(
        f"Backbone weights not found: {where} does not exist. edge never downloads weights. "
        f"Put the file {spec.filename} ({spec.description}, SHA-256 starting {spec.sha256_prefix}) at "
        f"{hub_checkpoint_dir() / spec.filename} (the torch hub cache; set TORCH_HOME to move it), "
        f"or pass its path explicitly with --weights PATH."
    )


def verify(path: Path, spec: WeightsFile) -> str:
    """Check the file's SHA-256 prefix; return the full digest."""
    digest = sha256_of(path)
    if not digest.startswith(spec.sha256_prefix):
        raise WeightsError(
            f"{path} is not {spec.filename}: its SHA-256 starts {digest[:8]}, expected "
            f"{spec.sha256_prefix} ({spec.description}). Replace it with the right file."
        )
    return digest


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict without executing code (weights_only), mapping damage to WeightsError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state
