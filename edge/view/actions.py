"""What people at the line may change from edge-view, without HTTP: clear a rejected part as good
(its frame from the recent-frames ring into the bank store's candidates, with who and when), build
the next version from the candidates (staged: `edge-calibrate --add-candidates --stage` in a
process of its own, at the lowest CPU priority, where the station install is present), and make a
version active (a staged one, or a rollback), then tell the station to reload."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.bankstore import BankStore
from edge.client import control_request, request_reload
from edge.errors import EdgeError
from edge.protocol import Verdict
from edge.recent import RecentFrames
from edge.view.access import Person

log = logging.getLogger("edge.view")
RELOAD_TIMEOUT_S = 120.0  # a worker loads and warms up a bank before it answers
STATUS_TIMEOUT_S = 1.0  # a worker answers between two micro-batches
BUILD_TIMEOUT_S = 4 * 3600.0
# what a cleared reject's candidate file keeps of its verdict, beside who cleared it and when
CANDIDATE_FACTS = (
    "camera", "frame_id", "part_id", "capture_utc", "score", "threshold", "bank_id", "bank_version",
)  # fmt: skip
LOWEST_PRIORITY = 19  # a build shares the station's CPU with inspection: inspection goes first


@dataclass
class Build:
    """A bank version being built from the candidates, or the latest one built."""

    by: str
    started_utc: str
    running: bool = True
    report: dict[str, Any] | None = None  # edge-calibrate's --json report
    error: str | None = None

    @property
    def ok(self) -> bool | None:
        """None while running; then whether a staged version came of it."""
        return None if self.running else self.error is None

    def public(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("by", "started_utc", "running", "ok", "error")} | {
            "version": (self.report or {}).get("version")
        }


class ActionError(Exception):
    """An action refused, with the HTTP status that says why (404 unknown, 409 conflicting)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Actions:
    store: BankStore | None  # the store shown when no recipe is named (--store, or the first recipe's)
    ring: RecentFrames | None
    control: str | None = None  # the worker's (or the broker's) control endpoint, for reloads
    build: Build | None = None
    building_lock: threading.Lock = field(default_factory=threading.Lock)
    stores: dict[str, BankStore] = field(default_factory=dict)  # recipe → its store (--config)
    config_path: Path | None = None  # the station file (--config): a build calibrates its recipe's regions

    @property
    def can_build(self) -> bool:
        """Building needs the engine: the station install in this Python, and a store."""
        return self.store is not None and importlib.util.find_spec("torch") is not None

    def _store(self, recipe: str | None = None) -> BankStore:
        if recipe is not None:
            if recipe not in self.stores:
                raise ActionError(
                    404, f"no recipe {recipe!r}; this station's: {', '.join(self.stores) or 'none'}"
                )
            return self.stores[recipe]
        if self.store is None:
            raise ActionError(409, "edge-view was started without --store: it cannot change the bank")
        return self.store

    def _store_of(self, bank_id: Any) -> BankStore:
        """The store a part's bank came from (with recipes, one store each)."""
        for store in self.stores.values():
            if store.bank_id == bank_id:
                return store
        return self._store()

    def clear(self, camera: str, frame_id: str, person: Person) -> dict[str, Any]:
        """File a rejected part's frame as a good-part candidate for the next bank version."""
        if self.ring is None:
            raise ActionError(409, "edge-view was started without --recent: it has no frames to clear")
        frame = self.ring.get(camera, frame_id)
        if frame is None:
            raise ActionError(404, f"frame {frame_id!r} of {camera} is no longer among the recent frames")
        verdict = frame.verdict
        store = self._store_of(verdict.get("bank_id"))
        if verdict.get("verdict") != Verdict.NOK.value:
            raise ActionError(409, f"only NOK parts can be cleared; this one is {verdict.get('verdict')}")
        if verdict.get("bank_id") != store.bank_id:
            raise ActionError(
                409, f"the part was scored by bank {verdict.get('bank_id')!r}, not by this store's "
                f"({store.bank_id!r}): is edge-view --store the station's bank store?",
            )  # fmt: skip
        facts = {
            **{k: verdict.get(k) for k in CANDIDATE_FACTS},
            "cleared_by": person.name,
            "cleared_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        added = store.add_candidate(frame.key, frame.png.read_bytes(), facts)
        if added:
            log.info("%s cleared %s %s (score %s) as good", person.name, camera, frame_id, facts["score"])
        return {"ok": True, "candidate": frame.key, "already": not added}

    def activate(self, version: str, person: Person, recipe: str | None = None) -> dict[str, Any]:
        """Make `version` active and ask the station to reload; the reply says what the station did."""
        store = self._store(recipe)
        try:
            store.activate(version, by=person.name)
        except EdgeError as exc:
            raise ActionError(409, str(exc)) from None
        log.info("%s activated %s of %s", person.name, version, store.bank_id)
        reply = request_reload(self.control, RELOAD_TIMEOUT_S) if self.control else None
        return {"ok": True, "version": version, "reload": reply}

    def start_build(self, person: Person, recipe: str | None = None) -> dict[str, Any]:
        """Build the next version from the waiting candidates, staged, in a process of its own."""
        store = self._store(recipe)
        if not self.can_build:
            raise ActionError(409, "this edge-view cannot build banks (no station install here): run "
                              "edge-calibrate --add-candidates --stage on the station")  # fmt: skip
        if not store.candidates():
            raise ActionError(409, "no cleared rejects are waiting: there is nothing to add")
        with self.building_lock:
            if self.build is not None and self.build.running:
                raise ActionError(409, f"a build started by {self.build.by} is still running")
            self.build = Build(person.name, datetime.now(UTC).isoformat(timespec="seconds"))
        where = ["--out", str(store.root)]
        if recipe is not None and self.config_path is not None:  # the recipe's regions get thresholds
            where = ["--config", str(self.config_path), "--product", recipe]
        build = (where, self.build)
        threading.Thread(target=self._run_build, args=build, name="build", daemon=True).start()
        log.info("%s started building the next version of %s from its candidates", person.name, store.bank_id)
        return {"ok": True, "build": self.build.public()}

    def _run_build(self, where: list[str], build: Build) -> None:
        with tempfile.TemporaryDirectory(prefix="edge-build-") as folder:
            report = Path(folder) / "report.json"
            command = [sys.executable, "-m", "edge.calibration.cli", "--add-candidates", "--stage",
                       *where, "--json", str(report), "--quiet"]  # fmt: skip
            build.error = run_niced(command, BUILD_TIMEOUT_S)
            if build.error is None:
                try:
                    build.report = json.loads(report.read_text())
                except (OSError, ValueError) as exc:
                    build.error = f"edge-calibrate left no readable report: {exc}"
        build.running = False
        log.info(
            "build by %s: %s", build.by, (build.report or {}).get("version") if build.ok else build.error
        )

    def bank(self, recipe: str | None = None) -> dict[str, Any]:
        """The versions with their calibration reports, the cleared rejects waiting, and which bank
        the station's worker (or each worker of a pool) scores with."""
        found: dict[str, Any] = {
            "store": None, "versions": [], "candidates": [], "station": self.station(),
            "can_build": self.can_build, "build": self.build.public() if self.build else None,
            "recipes": list(self.stores),
        }  # fmt: skip
        store = self.stores.get(recipe) if recipe is not None else self.store
        if store is None:
            return found
        found["store"] = store.bank_id
        try:
            found["versions"] = store.reports()
        except EdgeError as exc:
            found["error"] = str(exc)
        found["candidates"] = [facts | {"key": png.stem} for png, facts in store.candidates()]
        return found

    def station(self) -> dict[str, Any] | None:
        """The control endpoint's status reply (`answering` false when none came), or None without one."""
        if self.control is None:
            return None
        reply = control_request(self.control, "status", STATUS_TIMEOUT_S)
        return {"answering": reply is not None, **(reply or {})}


def run_niced(command: list[str], timeout_s: float) -> str | None:
    """Run `command` at the lowest CPU priority; None when it succeeded, else why not (its last
    line of standard error: edge's commands say what went wrong there, in one line)."""
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return f"{command[2]} could not start: {exc}"
    with contextlib.suppress(OSError):  # already ended, or not allowed: it runs at normal priority
        os.setpriority(os.PRIO_PROCESS, process.pid, LOWEST_PRIORITY)
    try:
        _, errors = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return f"{command[2]} took longer than {timeout_s:.0f} s and was stopped"
    if process.returncode == 0:
        return None
    lines = [line for line in errors.splitlines() if line.strip()]
    return lines[-1] if lines else f"{command[2]} exited with {process.returncode}"
