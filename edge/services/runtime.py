"""What every station process shares: its command line, its configuration, and clean stopping."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from edge.cli_support import setup_logging
from edge.config import StationConfig, check_station, load_config

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
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop
