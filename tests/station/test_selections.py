"""A free-running camera's recipe, selected over the control endpoint, outlives the process that
accepted it: a lone worker killed and restarted by edge-run, and a pool whose broker sends it to
every worker (one that joins later too) and keeps it across its own restart. Real processes and
sockets (edge-run); the parts name no product, so the selection alone decides their recipe."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
import zmq
from station_kit import Line, child_pid, start_station, station_config, stop_station, wait_for_pool

from edge.client import control_request, select_recipe


def two_recipes(config: Path) -> Path:
    """The kit's station with two recipes on its bank store: `whole` (the default) and `other`."""
    raw = yaml.safe_load(config.read_text())
    bank = raw.pop("bank")
    raw["recipes"] = [{"name": "whole", "bank": bank}, {"name": "other", "bank": bank}]
    config.write_text(yaml.safe_dump(raw))
    return config


def status_when(control: str, holds, timeout_s: float = 90) -> dict:
    """The control endpoint's status once `holds(status)` (a restarted process answers again)."""
    deadline = time.monotonic() + timeout_s
    reply = None
    while time.monotonic() < deadline:
        reply = control_request(control, "status", 1.0)
        if reply is not None and holds(reply):
            return reply
        time.sleep(0.2)
    raise AssertionError(f"the status never showed it: {reply}")


def judged_by(line: Line, parts: list[str]) -> set[str]:
    line.trigger_parts(parts, period_s=0.02)
    line.collect_until_answered(parts, timeout_s=60)
    return {line.verdicts[p][0].recipe for p in parts}


@pytest.mark.parametrize("pool", [None, 2])
def test_a_selection_outlives_the_process_that_took_it(tmp_path, bank_store, pool):
    config = two_recipes(station_config(tmp_path, bank_store.root, pool=pool))
    station = start_station(config)
    context = zmq.Context()
    control = f"ipc://{tmp_path}/control"
    holder = "edge.services.broker" if pool else "edge.services.worker"
    try:
        line = Line(context, tmp_path)
        line.wait_for_publisher()
        if pool:
            wait_for_pool(control, pool)
        status_when(control, lambda s: s.get("recipes") == ["whole", "other"])
        before = judged_by(line, ["a1", "a2"])
        unknown = select_recipe(control, "cam0", "zzz")
        chosen = select_recipe(control, "cam0", "other")
        selected = judged_by(line, [f"b{i}" for i in range(6)])  # on every worker of a pool
        os.kill(child_pid(station.pid, holder), signal.SIGKILL)
        if pool:  # and a worker restarted after the broker: it joins the new broker
            status_when(control, lambda s: s["selected"] == {"cam0": "other"})
            os.kill(child_pid(station.pid, "edge.services.worker"), signal.SIGKILL)
            wait_for_pool(control, pool)
        restarted = status_when(control, lambda s: s["selected"] == {"cam0": "other"})
        after = judged_by(line, [f"c{i}" for i in range(6)])
    finally:
        code, output = stop_station(station)
        context.destroy(linger=0)
    assert code == 0, output
    assert before == {"whole"} and selected == {"other"} and after == {"other"}, output
    assert unknown["ok"] is False and "unknown recipe 'zzz'" in unknown["error"]
    assert chosen["ok"] and chosen["selected"] == {"cam0": "other"}
    assert restarted["selected"] == {"cam0": "other"}
    assert "recipes selected before the restart: cam0 other" in output
