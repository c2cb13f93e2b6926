"""edge-run: a station on one host: publisher, worker (or a broker and a pool of workers), one
capture per camera and the configured bridges, as separate processes (edge/processes.py lists them).

A process that fails is restarted, at most `supervisor.restart_burst` times per
`supervisor.restart_interval_s` (then the station stops, as systemd's start limit would; a bridge
is given up instead and the station runs on). SIGTERM stops the captures first, then the broker,
the workers, the publisher, then the bridges, each after it has drained what it holds, so every
part already triggered still gets its verdict and every verdict reaches the bridges. When every
camera's source has ended (a finite replay), the station drains and stops by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edge.cli_support import run_cli, setup_logging
from edge.config import StationConfig, camera_warnings, check_station, load_config
from edge.lifecycle import stop_on_signals
from edge.processes import RANKS, bridges_left_out, station_processes, units
from edge.services.runtime import EXIT_CODES, RUN_DIR_VARIABLE, service_parser

log = logging.getLogger("edge.run")
EXIT_RESTART_LIMIT = 7
# a child's exit codes that say a user's mistake (its own log line names it): restarting cannot help
NOT_TRANSIENT = {
    2: "a usage mistake",
    3: "backbone weights missing or foreign",
    4: "a bank that cannot be used",
    6: "a configuration error",
}
POLL_S = 0.2


@dataclass
class Child:
    """One supervised process and its restart history."""

    name: str
    argv: list[str]
    essential: bool = True  # False: given up after its restart limit, the station runs on
    process: subprocess.Popen | None = None
    restarts: deque[float] = field(default_factory=deque)
    ended: bool = False  # a capture whose finite source ended (exit 0), a bridge given up: not restarted

    @property
    def is_capture(self) -> bool:
        return self.name.startswith("capture:")

    @property
    def rank(self) -> str:
        return self.name.split(":")[0]

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(self.argv, env=env)
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s after SIGTERM; killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait()


def _describe_exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class Supervisor:
    def __init__(self, config_path: Path, config: StationConfig) -> None:
        self.config = config
        self.children = [
            Child(process.name, process.argv(config_path), process.essential)
            for process in station_processes(config)
        ]
        self.env = dict(os.environ)
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        # state that must outlive one child (the publisher's journal), for this run of the station
        self.run_dir = tempfile.TemporaryDirectory(prefix=f"edge-run-{config.station}-")
        self.env.setdefault(RUN_DIR_VARIABLE, self.run_dir.name)

    def _restart(self, child: Child, code: int) -> bool:
        """Restart a failed child unless it failed too often; False when the limit is reached by a
        process the station cannot run without."""
        limits = self.config.supervisor
        now = time.monotonic()
        while child.restarts and now - child.restarts[0] > limits.restart_interval_s:
            child.restarts.popleft()
        if len(child.restarts) >= limits.restart_burst:
            outcome = "stopping the station" if child.essential else "given up, the station runs on"
            log.error("%s failed (%s) after %d restarts within %.0f s: %s", child.name, _describe_exit(code),
                      len(child.restarts), limits.restart_interval_s, outcome)  # fmt: skip
            child.ended = not child.essential
            return not child.essential
        child.restarts.append(now)
        log.warning("%s failed (%s); restarting it", child.name, _describe_exit(code))
        child.start(self.env)
        return True

    def _check_children(self) -> int | None:
        """None while the station runs on; else the exit code it stops with."""
        for child in self.children:
            code = None if child.process is None or child.ended else child.process.poll()
            if code is None:
                continue
            if code == 0 and child.is_capture:
                log.info("%s: its source has ended", child.name)
                child.ended = True
            elif code in NOT_TRANSIENT and not child.essential:
                log.error("%s stopped with exit code %d (%s; its own line above says what): the station "
                          "runs on without it", child.name, code, NOT_TRANSIENT[code])  # fmt: skip
                child.ended = True
            elif code in NOT_TRANSIENT:
                why = NOT_TRANSIENT[code]
                log.error("%s stopped with exit code %d (%s, which a restart cannot fix; its own line "
                          "above says what): stopping the station", child.name, code, why)  # fmt: skip
                return code
            elif not self._restart(child, code):
                return EXIT_RESTART_LIMIT
        return None

    def run(self, stop: threading.Event) -> int:
        for child in self.children:
            child.start(self.env)
        code = 0
        while not stop.is_set():
            failed = self._check_children()
            if failed is not None:
                code = failed
                break
            if all(child.ended for child in self.children if child.is_capture):
                log.info("every camera's source has ended")
                break
            time.sleep(POLL_S)
        self.shutdown()
        return code

    def shutdown(self) -> None:
        """Data-flow order: the captures, the broker, the workers, the publisher, then the bridges,
        each drained; the processes of one rank (every capture, every worker) drain at the same time."""
        timeout = self.config.supervisor.drain_timeout_s
        for rank in RANKS:
            group = [child for child in self.children if child.rank == rank]
            for child in group:
                child.terminate()
            deadline = time.monotonic() + timeout
            for child in group:
                child.wait_or_kill(deadline, timeout)
        self.run_dir.cleanup()
        log.info("station %s stopped", self.config.station)


def _main(argv: list[str] | None) -> int:
    parser = service_parser("edge-run", __doc__.split("\n\n")[0])
    parser.epilog = f"{EXIT_CODES}; {EXIT_RESTART_LIMIT} a process failed more often than its restart limit"
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration (keys, types, files, endpoints bindable), list the processes, exit",
    )
    parser.add_argument(
        "--units", action="store_true", help="print the systemd units this station enables, one a line, exit"
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    config = load_config(args.config)
    if args.units:
        print("\n".join(units(config)))
        return 0
    for name, why in bridges_left_out(config).items():  # said first: a configured bridge not run
        log.warning("bridges.%s is configured but not run: %s", name, why)
    check_station(config, bind=True)  # what --check-config refuses, edge-run refuses too
    for warning in camera_warnings(config):  # and what it warns of, edge-run warns of
        log.warning("%s: the station starts; the camera is reported reconnecting until it opens", warning)
    if args.check_config:
        processes = ", ".join(process.name for process in station_processes(config))
        banks = ", ".join(f"{recipe.name}: {recipe.bank.path}" for recipe in config.recipe_list)
        log.info("%s is valid: station %s, %s; runs %s", args.config, config.station, banks, processes)
        return 0
    stop = stop_on_signals()
    return Supervisor(args.config.resolve(), config).run(stop)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
