"""What every station process shares: its command line, its configuration, and clean stopping."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli_support import setup_logging
from edge.config import CurveClientConfig, CurveServerConfig, StationConfig, check_station, load_config
from edge.security import CurveClient, CurveServer
from edge.services.sdnotify import notify

if TYPE_CHECKING:
    from edge.metrics import ProcessMetrics

log = logging.getLogger("edge.service")
EXIT_CODES = (
    "exit codes: 0 stopped cleanly; 2 bad usage; 3 weights missing or foreign; 4 bank file unusable; "
    "6 invalid configuration; 130 interrupted"
)


def service_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES)
    parser.add_argument("config", type=Path, help="the station's YAML configuration")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def start_service(args: argparse.Namespace) -> StationConfig:
    """Logging, then the configuration, checked for what this process needs (files, not ports)."""
    setup_logging(args.verbose)
    config = load_config(args.config)
    check_station(config, bind=False)
    return config


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the process finishes its in-flight work and exits 0."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        notify("STOPPING=1", "STATUS=draining")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def serve_metrics(metrics: ProcessMetrics, port: int | None) -> None:
    if port is not None:
        bound = metrics.serve(port)
        log.info("metrics on :%d/metrics", bound)


def ready(status: str) -> None:
    """Tell systemd (Type=notify) the process can work now."""
    log.info("%s", status)
    notify("READY=1", f"STATUS={status}")


def curve_server(keys: CurveServerConfig | None, domain: str = "edge") -> CurveServer | None:
    return CurveServer(keys.secret_key, keys.allowed_clients, domain) if keys else None


def curve_client(keys: CurveClientConfig | None) -> CurveClient | None:
    return CurveClient(keys.secret_key, keys.server_key) if keys else None
