"""A process's life under systemd or edge-run, for station processes and bridges alike: stop on
SIGTERM/SIGINT, and systemd's notify protocol with the standard library (READY, STATUS, STOPPING,
WATCHDOG).

One datagram per message to the socket `$NOTIFY_SOCKET` names (a path, or '@' for the abstract
namespace). Outside systemd (no such variable) every call does nothing. The watchdog is fed from a
process's main loop, never from a side thread, and only when that loop makes progress: a worker
stuck in inference or a capture whose camera delivers nothing stops feeding it, and systemd
restarts the process after `WatchdogSec`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

log = logging.getLogger("edge.systemd")


def notify(*states: str) -> bool:
    """Send `states` ("READY=1", "STATUS=...") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    except OSError as exc:  # systemd gone or socket unreachable: the process itself carries on
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False


class Watchdog:
    """Feeds systemd's watchdog at half its interval, when the caller says it made progress."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.interval_s = int(usec) / 2e6 if enabled else None
        self.last = 0.0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def progress(self) -> None:
        """The loop did useful work (or is healthily idle): feed the watchdog if it is due."""
        if self.interval_s is None:
            return
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            notify("WATCHDOG=1")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the process finishes its in-flight work and exits 0
    (and tells systemd it is stopping)."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        notify("STOPPING=1", "STATUS=draining")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop
