"""The processes of a station, listed once: what `edge-run` starts and drains, what
`edge-run --check-config` reports, and which systemd units `edge-run --units` lists for
deploy/install.sh to enable.

From the station file: the publisher; the worker, or the broker and one worker per slot of a pool;
one capture per camera; and each configured bridge whose extra is installed (one that is not is
named, with the reason, rather than started or silently left out).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.config import StationConfig

# data-flow order: a SIGTERM drains the captures first and the bridges last, each rank at once
RANKS = ("capture", "broker", "worker", "publisher", "bridge")
TARGET = "edge.target"


@dataclass(frozen=True)
class StationProcess:
    name: str  # publisher, worker, worker:0, broker, capture:cam0, bridge:mqtt
    module: str  # run as python -m <module>
    arguments: tuple[str, ...]  # CONFIG stands for the station file's path
    unit: str  # its systemd unit
    essential: bool = True  # False: failing for good leaves the station running (a bridge)

    @property
    def rank(self) -> str:
        return self.name.split(":")[0]

    def argv(self, config: Path) -> list[str]:
        arguments = [str(config) if argument == "CONFIG" else argument for argument in self.arguments]
        return [sys.executable, "-m", self.module, *arguments]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package missing
        return False


def bridges_left_out(config: StationConfig) -> dict[str, str]:
    """Configured bridges that cannot run here, with why (their extra is not installed)."""
    left_out = {}
    for name, section in config.bridges.configured().items():
        module, extra = section.needs
        if not _installed(module):
            left_out[name] = f"{module.split('.')[0]} is not installed (pip install 'edge[{extra}]')"
    return left_out


def station_processes(config: StationConfig) -> list[StationProcess]:
    """Every process this station runs, in start order (the publisher first)."""
    service = "edge.services"
    processes = [StationProcess("publisher", f"{service}.publisher", ("CONFIG",), "edge-publisher.service")]
    if config.pooled:
        processes.append(StationProcess("broker", f"{service}.broker", ("CONFIG",), "edge-broker.service"))
        processes += [
            StationProcess(
                f"worker:{slot}",
                f"{service}.worker",
                ("CONFIG", "--slot", str(slot)),
                f"edge-worker@{slot}.service",
            )
            for slot in range(len(config.worker_devices))
        ]
    else:
        processes.append(StationProcess("worker", f"{service}.worker", ("CONFIG",), "edge-worker.service"))
    processes += [
        StationProcess(
            f"capture:{camera}",
            f"{service}.capture",
            ("CONFIG", "--camera", camera),
            f"edge-capture@{camera}.service",
        )
        for camera in config.camera_names
    ]
    left_out = bridges_left_out(config)
    processes += [
        StationProcess(
            f"bridge:{name}",
            f"edge.bridges.{name}",
            ("--config", "CONFIG"),
            f"edge-{name}-bridge.service",
            essential=False,
        )
        for name in config.bridges.configured()
        if name not in left_out
    ]
    return processes


def units(config: StationConfig) -> list[str]:
    """The systemd units to enable for this station: its target and one per process."""
    return [TARGET, *(process.unit for process in station_processes(config))]
