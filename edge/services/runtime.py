"""What every station process shares: its command line, its configuration, and clean stopping."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli_support import setup_logging
from edge.config import CurveClientConfig, CurveServerConfig, StationConfig, check_station, load_config
from edge.lifecycle import Watchdog, notify
from edge.security import CurveClient, CurveServer

if TYPE_CHECKING:
    from edge.metrics import ProcessMetrics

log = logging.getLogger("edge.service")
RUN_DIR_VARIABLE = "EDGE_RUN_DIR"  # edge-run's folder for state that outlives one of its processes


def state_file(name: str) -> Path | None:
    """`name` in the folder for state that outlives a process: systemd's StateDirectory, else
    edge-run's run folder; None for a process started by hand without either."""
    for variable in ("STATE_DIRECTORY", RUN_DIR_VARIABLE):
        folder = os.environ.get(variable)
        if folder:
            return Path(folder.split(":")[0]) / name
    return None


def selections_path(config: StationConfig) -> Path | None:
    """Where the worker (or the pool's broker) keeps the recipe selections across restarts."""
    path = state_file(f"selections-{config.station}.json")
    if path is None and len(config.recipe_list) > 1:
        log.warning(
            "no state folder (STATE_DIRECTORY under systemd): a recipe selection ends with this process"
        )
    return path


EXIT_CODES = (
    "exit codes: 0 stopped cleanly; 2 bad usage; 3 weights missing or foreign; 4 bank file unusable; "
    "6 invalid configuration; 130 interrupted"
)


def service_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES)
    parser.add_argument("config", type=Path, help="the station's YAML configuration")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def start_service(args: argparse.Namespace, needs_bank: bool = False) -> StationConfig:
    """Logging, then the configuration, checked for what this process needs (files, not ports; the
    bank only where it scores: capture and publisher run at cold start, before there is a bank)."""
    setup_logging(args.verbose)
    config = load_config(args.config)
    check_station(config, bind=False, bank=needs_bank)
    return config


def operate(
    name: str,
    run: Callable[[threading.Event, Callable[[], None]], object],
    stop: threading.Event,
    metrics: ProcessMetrics,
    metrics_port: int | None,
    status: str,
) -> int:
    """A process's working life: metrics served, READY told to systemd, its loop run with the
    watchdog fed by that loop, until `stop` and the drain that follows."""
    if metrics_port is not None:
        log.info("metrics on :%d/metrics", metrics.serve(metrics_port))
    log.info("%s", status)
    notify("READY=1", f"STATUS={status}")
    try:
        counters = run(stop, Watchdog().progress)
    finally:
        metrics.close()
    log.info("%s stopped: %s", name, counters)
    return 0


def curve_server(keys: CurveServerConfig | None, domain: str = "edge") -> CurveServer | None:
    return CurveServer(keys.secret_key, keys.allowed_clients, domain) if keys else None


def curve_client(keys: CurveClientConfig | None) -> CurveClient | None:
    return CurveClient(keys.secret_key, keys.server_key) if keys else None
