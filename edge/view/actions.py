"""What people at the line may change from edge-view, without HTTP: clear a rejected part as good
(its frame from the recent-frames ring into the bank store's candidates, with who and when) and
make a bank version active (a staged one, or a rollback), then tell the station to reload.
Building the next version from the candidates stays with `edge-calibrate --add-candidates`, on
the station (it needs the engine); the page shows its report before anyone activates it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
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


class ActionError(Exception):
    """An action refused, with the HTTP status that says why (404 unknown, 409 conflicting)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Actions:
    store: BankStore | None
    ring: RecentFrames | None
    control: str | None = None  # the worker's (or the broker's) control endpoint, for reloads

    def _store(self) -> BankStore:
        if self.store is None:
            raise ActionError(409, "edge-view was started without --store: it cannot change the bank")
        return self.store

    def clear(self, camera: str, frame_id: str, person: Person) -> dict[str, Any]:
        """File a rejected part's frame as a good-part candidate for the next bank version."""
        store = self._store()
        if self.ring is None:
            raise ActionError(409, "edge-view was started without --recent: it has no frames to clear")
        frame = self.ring.get(camera, frame_id)
        if frame is None:
            raise ActionError(404, f"frame {frame_id!r} of {camera} is no longer among the recent frames")
        verdict = frame.verdict
        if verdict.get("verdict") != Verdict.NOK.value:
            raise ActionError(409, f"only NOK parts can be cleared; this one is {verdict.get('verdict')}")
        if verdict.get("bank_id") != store.bank_id:
            raise ActionError(
                409, f"the part was scored by bank {verdict.get('bank_id')!r}, not by this store's "
                f"({store.bank_id!r}): is edge-view --store the station's bank store?",
            )  # fmt: skip
        facts = {
            **{k: verdict.get(k) for k in ("camera", "frame_id", "part_id", "capture_utc", "score")},
            **{k: verdict.get(k) for k in ("threshold", "bank_id", "bank_version")},
            "cleared_by": person.name,
            "cleared_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        added = store.add_candidate(frame.key, frame.png.read_bytes(), facts)
        if added:
            log.info("%s cleared %s %s (score %s) as good", person.name, camera, frame_id, facts["score"])
        return {"ok": True, "candidate": frame.key, "already": not added}

    def activate(self, version: str, person: Person) -> dict[str, Any]:
        """Make `version` active and ask the station to reload; the reply says what the station did."""
        store = self._store()
        try:
            store.activate(version, by=person.name)
        except EdgeError as exc:
            raise ActionError(409, str(exc)) from None
        log.info("%s activated %s of %s", person.name, version, store.bank_id)
        reply = request_reload(self.control, RELOAD_TIMEOUT_S) if self.control else None
        return {"ok": True, "version": version, "reload": reply}

    def bank(self) -> dict[str, Any]:
        """The versions with their calibration reports, the cleared rejects waiting, and which bank
        the station's worker (or each worker of a pool) scores with."""
        found: dict[str, Any] = {"store": None, "versions": [], "candidates": [], "station": self.station()}
        if self.store is None:
            return found
        found["store"] = self.store.bank_id
        try:
            found["versions"] = self.store.reports()
        except EdgeError as exc:
            found["error"] = str(exc)
        found["candidates"] = [facts | {"key": png.stem} for png, facts in self.store.candidates()]
        return found

    def station(self) -> dict[str, Any] | None:
        """The control endpoint's status reply (`answering` false when none came), or None without one."""
        if self.control is None:
            return None
        reply = control_request(self.control, "status", STATUS_TIMEOUT_S)
        return {"answering": reply is not None, **(reply or {})}
