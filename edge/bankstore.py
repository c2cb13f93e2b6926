"""Versioned banks: every calibration writes a new version, one version is active, any can return.

A store is a folder:

    versions/v0001.edge, v0002.edge, ...   one model file per version, written once, never changed
    ACTIVE                                 the active version's name, replaced atomically
    history.jsonl                          who made which version active, and when (appended)
    frames/                                the accepted good frames, to rebuild without the line
    candidates/<key>.png, <key>.json       rejects an operator cleared as good (edge-view), with
                                           who and when; `edge-calibrate --add-candidates` fits
                                           the next version on them and files them under
    candidates/added/<version>/            the version that took them

Both the version files and ACTIVE only ever change by rename, so a calibration killed half-way
(or a full disk) leaves at most a temporary file, and the active bank stays what it was and loads.
A worker reads ACTIVE when it starts and when it is told to reload. Reading the store needs no
torch (edge-view shows and switches versions): only `publish` writes a model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from edge.bankfile import DRAWN_REGIONS, read_bank_file, write_bank_file
from edge.errors import ArtifactError, UsageError
from edge.files import write_bytes_atomic

if TYPE_CHECKING:
    from edge.engine.model import PatchCore

log = logging.getLogger("edge.bankstore")

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
SUFFIX = ".edge"
KEY_PATTERN = r"[0-9a-f]{8,64}"  # a candidate's file name (edge.recent.frame_key)


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
        self.candidates_dir = self.root / "candidates"
        self.active_file = self.root / "ACTIVE"
        self.history_file = self.root / "history.jsonl"
        self._records: dict[str, dict[str, Any]] = {}  # version → metadata: version files never change

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

    def publish(self, model: PatchCore, activate: bool = True, by: str = "edge-calibrate") -> str:
        """Write `model` as the next version and (unless staged: `activate` false) make it active;
        returns the version's name."""
        from edge.engine.artifact import save_model

        version = self._next_version()
        model.info.setdefault("calibration", {})["version"] = version
        try:
            save_model(model, self.path_of(version))
        except OSError as exc:
            raise ArtifactError(
                f"cannot write {self.path_of(version)}: {exc}; the active version is unchanged"
            ) from None
        if activate:
            self.activate(version, by)
        return version

    def _next_version(self) -> str:
        existing = self.versions()
        return f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"

    def publish_regions(self, drawn: dict[str, Any], by: str) -> str:
        """Stage the active version's bank again with regions drawn on edge-view (DRAWN_REGIONS in
        its metadata: the frame size, the regions and who drew them): a new version, so that
        regions are staged, activated, rolled back and recorded like any bank. Needs no torch."""
        base = self.active()
        meta, arrays = read_bank_file(base.path)
        version = self._next_version()
        meta[DRAWN_REGIONS] = drawn | {"by": by, "utc": _now(), "based_on": base.version}
        meta.setdefault("calibration", {})["version"] = version
        meta["created_utc"] = _now()
        try:
            write_bank_file(self.path_of(version), meta, arrays)
        except OSError as exc:
            raise ArtifactError(f"cannot write {self.path_of(version)}: {exc}; nothing was staged") from None
        return version

    def activate(self, version: str, by: str = "edge-calibrate") -> None:
        """Make `version` active (a rollback when it is older); it is verified to load first, and
        who did it is appended to the history."""
        if version not in self.versions():
            raise UsageError(f"{self.root} has no version {version!r}; it has {self.versions()}")
        read_bank_file(self.path_of(version))
        try:
            write_bytes_atomic(self.active_file, f"{version}\n".encode())
        except OSError as exc:
            raise ArtifactError(
                f"cannot write {self.active_file}: {exc}; the active version is unchanged"
            ) from None
        try:
            self._file_candidates(version)
        except OSError as exc:  # they stay queued; the next version finds their frames already kept
            log.warning("%s is active, but its candidates could not be filed: %s", version, exc)
        entry = {"utc": _now(), "version": version, "by": by}
        try:
            with self.history_file.open("a") as history:
                history.write(json.dumps(entry) + "\n")
                history.flush()
                os.fsync(history.fileno())
        except OSError as exc:  # the version is active; only the record of it is missing
            raise ArtifactError(
                f"{version} is active, but {self.history_file} could not record it: {exc}"
            ) from None

    def history(self) -> list[dict[str, Any]]:
        """Activations, oldest first (a line cut short by a crash is skipped)."""
        if not self.history_file.is_file():
            return []
        entries = []
        for line in self.history_file.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def record(self, version: str) -> dict[str, Any]:
        """A version's metadata, from the file's header alone (no tensors read), read once: a
        version file is written once and never changed (edge-view asks every few seconds)."""
        if version not in self._records:
            path = self.path_of(version)
            try:
                with safe_open(str(path), framework="numpy") as handle:
                    self._records[version] = json.loads((handle.metadata() or {})["meta"])
            except (SafetensorError, OSError, KeyError, ValueError) as exc:
                raise ArtifactError(f"{path} is unreadable: {exc}") from None
        return self._records[version]

    def reports(self) -> list[dict[str, Any]]:
        """Each version's calibration report (threshold, expected false-reject rate and its 95 %
        bound, frames, cleared rejects taken), as `edge-calibrate --list` prints it and edge-view
        shows it; `staged`: newer than any version that was ever active."""
        active = self.active_version()
        activated = [entry.get("version") for entry in self.history()] + [active]
        newest_activated = max((_number(v) for v in activated if isinstance(v, str)), default=0)
        rows = []
        for version in self.versions():
            meta = self.record(version)
            record = meta.get("calibration", {})
            choice = record.get("choice", {})
            rows.append(
                {
                    "version": version,
                    "active": version == active,
                    "staged": _number(version) > newest_activated,
                    "created_utc": meta.get("created_utc"),
                    "threshold": record.get("threshold"),
                    "expected_frr": choice.get("expected_frr"),
                    "frr_upper_95": choice.get("frr_upper_95"),
                    "held_out": choice.get("held_out"),
                    "frames": len(record.get("frames", [])),
                    "candidates": record.get("candidates") or [],
                    "regions": _drawn_summary(meta.get(DRAWN_REGIONS)),
                    "region_thresholds": _region_thresholds(record.get("regions")),
                }
            )
        return rows

    # ---- candidates: rejects cleared as good, waiting for the next version ---------------------
    def add_candidate(self, key: str, png: bytes, facts: dict[str, Any]) -> bool:
        """File a cleared frame (the PNG, then its facts); False if it is already a candidate."""
        if not re.fullmatch(KEY_PATTERN, key):
            raise UsageError(f"not a candidate key: {key!r}")
        png_path = self.candidates_dir / f"{key}.png"
        facts_path = png_path.with_suffix(".json")
        if facts_path.exists():
            return False
        write_bytes_atomic(png_path, png)
        write_bytes_atomic(facts_path, json.dumps(facts, indent=1).encode())
        return True

    def candidates(self) -> list[tuple[Path, dict[str, Any]]]:
        """Complete candidates (PNG and facts), oldest first."""
        found = []
        for facts_path in sorted(self.candidates_dir.glob("*.json")):
            png = facts_path.with_suffix(".png")
            try:
                facts = json.loads(facts_path.read_text())
            except (OSError, ValueError):
                continue
            if png.is_file() and isinstance(facts, dict):
                found.append((png, facts))
        return sorted(found, key=lambda item: str(item[1].get("cleared_utc", "")))

    def _file_candidates(self, version: str) -> None:
        """Candidates the now active `version` was fitted on leave the queue, to
        candidates/added/<version>/ (a staged version that is never activated leaves them there
        for the next one)."""
        taken = self.record(version).get("calibration", {}).get("candidates") or []
        target = self.candidates_dir / "added" / version
        for candidate in taken:
            if not re.fullmatch(KEY_PATTERN, str(candidate.get("key"))):
                continue
            png = self.candidates_dir / f"{candidate['key']}.png"
            for path in (png.with_suffix(".json"), png):
                if path.is_file():
                    target.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target / path.name)


def _region_thresholds(record: Any) -> dict[str, Any] | None:
    """Each region's calibrated threshold with its expected false-reject rate and bound, and the
    part's (edge-calibrate --config --product), as the version's record keeps them."""
    if not isinstance(record, dict):
        return None
    keep = ("threshold", "expected_frr", "frr_upper_95")
    found = {
        name: {k: choice.get(k) for k in keep} for name, choice in (record.get("thresholds") or {}).items()
    }
    part = record.get("part") or {}
    return {"regions": found, "part": {k: part.get(k) for k in ("expected_frr", "frr_upper_95")}}


def _drawn_summary(drawn: Any) -> dict[str, Any] | None:
    """Who drew a version's regions, when, on which version, and how many (edge-view's table)."""
    if not isinstance(drawn, dict):
        return None
    return {k: drawn.get(k) for k in ("by", "utc", "based_on")} | {"count": len(drawn.get("regions") or [])}


def _number(version: str) -> int:
    match = VERSION_PATTERN.match(version)
    return int(match.group(1)) if match else 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def active_drawn_regions(path: str | Path) -> Any:
    """The regions drawn on edge-view that the active version of the store at `path` carries (None
    where it carries none, or `path` is no store with an active version)."""
    path = Path(path)
    if not path.is_dir():
        return None
    store = BankStore(path)
    try:
        version = store.active_version()
        return None if version is None else store.record(version).get(DRAWN_REGIONS)
    except ArtifactError:  # said by the bank checks, where it matters
        return None


def resolve_bank(path: str | Path) -> BankRef:
    """A store folder means its active version; a file means itself (versioned by its calibration
    record's version, else its creation time)."""
    path = Path(path)
    if path.is_dir():
        return BankStore(path).active()
    if not path.is_file():
        raise ArtifactError(f"bank {path} does not exist: run edge-calibrate to create one")
    meta, _ = read_bank_file(path)
    version = str(meta.get("calibration", {}).get("version") or meta.get("created_utc", "unversioned"))
    return BankRef(path, path.stem, version)
