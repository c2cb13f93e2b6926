"""Which recipe judges each camera's frames that name no product (`select` on the control
endpoint), kept in a small file so that a selection outlives a restart of the worker, or of the
pool's broker, that accepted it: a free-running camera is never judged by the default recipe after
a crash while the line runs another product."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge.files import write_bytes_atomic
from edge.protocol import is_name

log = logging.getLogger("edge.selections")


def load_selections(path: Path | None, recipes: list[str]) -> dict[str, str]:
    """The selections kept at `path` that name a recipe of `recipes`; the others are logged and
    dropped, and an unreadable file is logged and read as none (the default recipe judges)."""
    if path is None or not path.exists():
        return {}
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.error("the recipe selections in %s cannot be read (%s): the default recipe judges", path, exc)
        return {}
    if not isinstance(kept, dict):
        log.error("the recipe selections in %s are not a mapping: the default recipe judges", path)
        return {}
    found = {c: r for c, r in kept.items() if is_name(c) and isinstance(r, str) and r in recipes}
    for camera in sorted(set(kept) - set(found)):
        log.warning(
            "camera %s: the kept selection %r is no recipe of this station: dropped", camera, kept[camera]
        )
    if found:
        log.info(
            "recipes selected before the restart: %s", ", ".join(f"{c} {r}" for c, r in sorted(found.items()))
        )
    return found


def save_selections(path: Path | None, selected: dict[str, str]) -> None:
    """Keep `selected` at `path`, written atomically (a disk that refuses is logged: the selection
    holds until a restart)."""
    if path is None:
        return
    try:
        write_bytes_atomic(path, json.dumps(selected, sort_keys=True).encode())
    except OSError as exc:
        log.error("the recipe selections could not be kept in %s (they hold until a restart): %s", path, exc)
