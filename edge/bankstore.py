"""Versioned banks: every calibration writes a new version, one version is active, any can return.

A store is a folder:

    versions/v0001.edge, v0002.edge, ...   one model file per version, written once, never changed
    ACTIVE                                 the active version's name, replaced atomically
    frames/                                the accepted good frames, to rebuild without the line

Both the version files and ACTIVE only ever change by rename, so a calibration killed half-way
(or a full disk) leaves at most a temporary file, and the active bank stays what it was and loads.
A worker reads ACTIVE when it starts and when it is told to reload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge.engine.artifact import read_artifact, save_model
from edge.engine.model import PatchCore
from edge.errors import ArtifactError, UsageError
from edge.files import write_bytes_atomic

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
SUFFIX = ".edge"


@dataclass(frozen=True)
class BankRef:
    """Which bank file a worker loads, and the identity its verdicts carry."""

    path: Path
    bank_id: str
    version: str


class BankStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.frames_dir = self.root / "frames"
        self.active_file = self.root / "ACTIVE"

    @property
    def bank_id(self) -> str:
        return self.root.resolve().name

    def versions(self) -> list[str]:
        """Complete versions, oldest first (temporary files of interrupted writes are not versions)."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.stem for p in self.versions_dir.glob(f"v*{SUFFIX}") if VERSION_PATTERN.match(p.stem)]
        return sorted(names, key=lambda name: int(name[1:]))

    def path_of(self, version: str) -> Path:
        return self.versions_dir / f"{version}{SUFFIX}"

    def active_version(self) -> str | None:
        if not self.active_file.is_file():
            return None
        version = self.active_file.read_text().strip()
        if not VERSION_PATTERN.match(version) or not self.path_of(version).is_file():
            raise ArtifactError(
                f"{self.active_file} names {version!r}, which is not a version in {self.root}"
            )
        return version

    def active(self) -> BankRef:
        version = self.active_version()
        if version is None:
            raise ArtifactError(f"{self.root} holds no active bank yet: run edge-calibrate first")
        return BankRef(self.path_of(version), self.bank_id, version)

    def publish(self, model: PatchCore) -> str:
        """Write `model` as the next version and make it active; returns the version's name."""
        existing = self.versions()
        version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
        model.info.setdefault("calibration", {})["version"] = version
        try:
            save_model(model, self.path_of(version))
        except OSError as exc:
            raise ArtifactError(
                f"cannot write {self.path_of(version)}: {exc}; the active version is unchanged"
            ) from None
        self.activate(version)
        return version

    def activate(self, version: str) -> None:
        """Make `version` active (a rollback when it is older); it is verified to load first."""
        if version not in self.versions():
            raise UsageError(f"{self.root} has no version {version!r}; it has {self.versions()}")
        read_artifact(self.path_of(version))
        try:
            write_bytes_atomic(self.active_file, f"{version}\n".encode())
        except OSError as exc:
            raise ArtifactError(
                f"cannot write {self.active_file}: {exc}; the active version is unchanged"
            ) from None


def resolve_bank(path: str | Path) -> BankRef:
    """A store folder means its active version; a file means itself (versioned by its calibration
    record's version, else its creation time)."""
    path = Path(path)
    if path.is_dir():
        return BankStore(path).active()
    if not path.is_file():
        raise ArtifactError(f"bank {path} does not exist: run edge-calibrate to create one")
    meta, _ = read_artifact(path)
    version = str(meta.get("calibration", {}).get("version") or meta.get("created_utc", "unversioned"))
    return BankRef(path, path.stem, version)
