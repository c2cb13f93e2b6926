"""The vision system's state as OPC 40100 (Machine Vision) names it, from what a bridge sees: the
station's heartbeats, its cameras' states, a part the bridge triggered that awaits its result, and
the bridge stopping. A PLC or MES starts a job only in `Ready`, and reads why in `Error`."""

from __future__ import annotations

from typing import Any

PREOPERATIONAL = "Preoperational"  # the bridge has not heard the station yet
READY = "Ready"  # alive, every camera streaming, no job of this bridge in progress
BUSY = "Busy"  # a part triggered through this bridge awaits its result
ERROR = "Error"  # the station's heartbeats stopped, or a camera is not streaming
HALTED = "Halted"  # the bridge is stopping
STATES = (PREOPERATIONAL, READY, BUSY, ERROR, HALTED)
WORKING_CAMERA_STATES = ("streaming", "ended")  # ended: a file source that has shown every file


def vision_state(
    alive: bool | None, cameras: dict[str, dict[str, Any]], job: str | None, stopping: bool
) -> tuple[str, str]:
    """(state, why): `why` says what is wrong in Error, else is empty."""
    if stopping:
        return HALTED, ""
    if alive is None:
        return PREOPERATIONAL, ""
    if not alive:
        return ERROR, "the station's heartbeats stopped"
    away = [
        f"camera {name} {state['state']}" + (f": {state['reason']}" if state.get("reason") else "")
        for name, state in sorted(cameras.items())
        if state.get("state") not in WORKING_CAMERA_STATES
    ]
    if away:
        return ERROR, "; ".join(away)
    return (BUSY, "") if job is not None else (READY, "")
