"""The recipe editor behind edge-view (started with --config): the station's recipes with the
regions in force, the picture to draw them on, a what-if of drawn regions on the recent frames, and
staging them as a bank version.

Regions drawn on the page are kept in a new version of the recipe's bank store (the active bank
with the regions in its metadata, edge.bankstore.DRAWN_REGIONS), so they are staged, activated
with a confirmation, rolled back and recorded with who did it like any bank version, and the worker
loads them on the reload that activation asks for. They are checked by the station file's rules
(edge.config.RecipeConfig) before anything runs, and staged only after a what-if judged exactly
those regions (edge-what-if, at the lowest CPU priority, where the station install is present)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.bankstore import DRAWN_REGIONS, BankStore
from edge.config import RecipeConfig, StationConfig
from edge.errors import EdgeError
from edge.recent import RecentFrames
from edge.view.access import Person
from edge.view.actions import ActionError, run_niced

log = logging.getLogger("edge.view")
WHAT_IF_FRAMES = 100  # the newest kept frames of the recipe a what-if judges again
WHAT_IF_TIMEOUT_S = 600.0


@dataclass
class RecipeEditor:
    config: StationConfig
    config_path: Path
    ring: RecentFrames | None
    judged: dict[str, str] = field(default_factory=dict)  # recipe → digest its last what-if judged
    judging: threading.Lock = field(default_factory=threading.Lock)

    @property
    def can_judge(self) -> bool:
        """A what-if scores frames: the station install in this Python, and frames to score."""
        return self.ring is not None and importlib.util.find_spec("torch") is not None

    def _recipe(self, name: str) -> RecipeConfig:
        for recipe in self.config.recipe_list:
            if recipe.name == name:
                return recipe
        raise ActionError(404, f"no recipe {name!r}; this station's: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [recipe.name for recipe in self.config.recipe_list]

    def store(self, name: str) -> BankStore:
        return BankStore(self._recipe(name).bank.path)

    def recipes(self) -> dict[str, Any]:
        """Every recipe with the regions in force (drawn on the page, or the station file's)."""
        found = []
        for recipe in self.config.recipe_list:
            row: dict[str, Any] = {"name": recipe.name, "number": recipe.number, "drawn": None, "error": None}
            try:
                store = BankStore(recipe.bank.path)
                version = store.active_version()
                drawn = None if version is None else store.record(version).get(DRAWN_REGIONS)
                active = self.config.with_drawn(recipe, drawn)
                row["drawn"] = None if drawn is None else {k: drawn.get(k) for k in ("by", "utc", "based_on")}
                row["version"] = version
            except EdgeError as exc:
                active, row["error"] = recipe, str(exc)
            row |= _drawn(active)
            row["registration"] = recipe.registration is not None
            found.append(row)
        scales = {camera.name: camera.mm_per_px for camera in self.config.cameras}
        return {"recipes": found, "mm_per_px": scales, "can_judge": self.can_judge}

    def image(self, name: str) -> Path | None:
        """What regions are drawn on: the registration reference (regions follow the part from
        there), else the newest kept frame the recipe judged."""
        recipe = self._recipe(name)
        if recipe.registration is not None:
            return Path(recipe.registration.reference)
        if self.ring is None:
            return None
        default = self.config.recipe().name
        newest = self.ring.newest(1, lambda verdict: (verdict.get("recipe") or default) == name)
        return newest[0].png if newest else None

    def check(self, name: str, proposal: Any) -> dict[str, Any]:
        """The proposal (frame and regions) as the station file's rules read it, or a 400 that says
        what is wrong in one line."""
        recipe = self._recipe(name)
        if not isinstance(proposal, dict) or set(proposal) != {"frame", "regions"}:
            raise ActionError(400, "send the regions as {recipe, frame: {width, height}, regions: [...]}")
        try:
            drawn = self.config.with_drawn(recipe, proposal)
        except EdgeError as exc:
            raise ActionError(400, f"recipe {name}: {exc}") from None
        files = {region.mask for region in recipe.regions} | {None}
        foreign = [region.name for region in drawn.regions if region.mask not in files]
        if foreign:
            raise ActionError(400, f"recipe {name}: region {foreign[0]}: a mask comes from the station "
                              "file; the page draws rectangles and polygons")  # fmt: skip
        return _drawn(drawn)

    def what_if(self, name: str, proposal: Any, person: Person) -> dict[str, Any]:
        """Judge the recipe's newest kept frames by its regions now and by these (edge-what-if)."""
        drawn = self.check(name, proposal)
        if not self.can_judge:
            raise ActionError(409, "this edge-view cannot judge frames (no --recent, or no station install): "
                              "run edge-what-if on the station")  # fmt: skip
        if not self.judging.acquire(blocking=False):
            raise ActionError(409, "a what-if is running: wait for it")
        try:
            report = self._judge(name, drawn)
        finally:
            self.judging.release()
        self.judged[name] = _digest(drawn)
        log.info("%s: what-if for recipe %s on %d frames: %d verdicts would change",
                 person.name, name, report["frames"], report["verdicts_changed"])  # fmt: skip
        return {"ok": True, "report": report}

    def _judge(self, name: str, drawn: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="edge-what-if-") as folder:
            regions, report = Path(folder) / "regions.json", Path(folder) / "report.json"
            regions.write_text(json.dumps(drawn))
            command = [sys.executable, "-m", "edge.services.whatif", str(self.config_path), "--recipe", name,
                       "--regions", str(regions), "--frames", str(WHAT_IF_FRAMES), "--json", str(report),
                       "--quiet"]  # fmt: skip
            error = run_niced(command, WHAT_IF_TIMEOUT_S)
            if error is not None:
                raise ActionError(500, f"the what-if failed: {error}")
            try:
                return json.loads(report.read_text())
            except (OSError, ValueError) as exc:
                raise ActionError(500, f"edge-what-if left no readable report: {exc}") from None

    def stage(self, name: str, proposal: Any, person: Person) -> dict[str, Any]:
        """Stage these regions as the recipe's next bank version (not active), once a what-if has
        judged exactly these."""
        drawn = self.check(name, proposal)
        if self.judged.get(name) != _digest(drawn):
            raise ActionError(
                409, "run the what-if on these regions first: it shows which verdicts they change"
            )
        store = self.store(name)
        try:
            version = store.publish_regions(drawn, person.name)
        except EdgeError as exc:
            raise ActionError(409, str(exc)) from None
        log.info("%s staged %d regions for recipe %s as %s of %s",
                 person.name, len(drawn["regions"]), name, version, store.bank_id)  # fmt: skip
        return {"ok": True, "version": version, "store": store.bank_id}


def _drawn(recipe: RecipeConfig) -> dict[str, Any]:
    """A recipe's frame size and regions as JSON (what the page draws and a version keeps)."""
    return {
        "frame": None if recipe.frame is None else recipe.frame.model_dump(),
        "regions": [region.model_dump(exclude_none=True) for region in recipe.regions],
    }


def _digest(drawn: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()
