"""edge-trigger: send software triggers to a triggered camera's capture, one part id each, at a
steady rate: what a PLC does on the line, for calibrating a triggered camera at cold start,
commissioning and tests.

Part ids are `<prefix><n>` (`--prefix`, default `trig-<start time>-`), unique across runs. A trigger
is only sent to a capture process that is there (ZeroMQ IMMEDIATE): one that cannot be sent within
`--send-timeout` is counted as not sent, never queued to fire later.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import zmq

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.protocol import NAME_MEANING, encode_trigger, is_name

log = logging.getLogger("edge.trigger")
EXIT_NOT_SENT = 3


def connect_address(bind_address: str) -> str:
    """The address to connect to for a bound endpoint on this host (`tcp://*:5560` → 127.0.0.1)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bind_address.startswith(wildcard):
            return "tcp://127.0.0.1:" + bind_address[len(wildcard) :]
    return bind_address


def _endpoint(args: argparse.Namespace) -> str:
    if (args.endpoint is None) == (args.config is None):
        raise UsageError("name the trigger endpoint, or --config and --camera (not both)")
    if args.endpoint is not None:
        return args.endpoint
    if args.camera is None:
        raise UsageError("--config needs --camera: whose triggers to send")
    from edge.config import load_config

    camera = load_config(args.config).camera(args.camera)
    if camera.trigger_endpoint is None:
        raise UsageError(f"camera {camera.name} runs free (trigger: {camera.trigger}): it takes no triggers")
    return connect_address(camera.trigger_endpoint)


def _paced(rate_hz: float, count: int | None) -> Iterator[int]:
    """0, 1, 2, ... at `rate_hz` (no drift: each is due at start + n / rate)."""
    start = time.monotonic()
    for n in itertools.count() if count is None else range(count):
        pause = start + n / rate_hz - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        yield n


def _progress(count: int | None):  # a tqdm bar where the station extra installed tqdm
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=count, unit="part", desc="triggers")


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-trigger",
        description=__doc__.split("\n\n")[0],
        epilog=f"exit codes: 0 every trigger sent; 2 bad usage; {EXIT_NOT_SENT} some not sent (no capture "
        "listening); 6 invalid configuration; 130 interrupted",
    )
    parser.add_argument("endpoint", nargs="?", help="the camera's trigger endpoint, e.g. tcp://station:5560")
    parser.add_argument("--config", type=Path, help="the station's configuration (with --camera)")
    parser.add_argument("--camera", help="the camera whose trigger_endpoint to use (with --config)")
    parser.add_argument("--rate", type=float, default=2.0, help="triggers per second (default 2)")
    parser.add_argument("--count", type=int, help="stop after this many (default: until interrupted)")
    parser.add_argument("--prefix", help="part ids are PREFIX<n> (default trig-<start time>-)")
    parser.add_argument(
        "--product", nargs="+", metavar="RECIPE",
        help="the recipe each part is judged by; several: in turn, a changeover every part",
    )  # fmt: skip
    parser.add_argument("--send-timeout", type=float, default=2.0, help="seconds to wait for a capture to "
                        "take a trigger before counting it not sent (default 2)")  # fmt: skip
    args = parser.parse_args(argv)
    setup_logging()
    if not 0 < args.rate <= 1000 or (args.count is not None and args.count < 1) or args.send_timeout <= 0:
        raise UsageError("--rate must be in (0, 1000], --count at least 1, --send-timeout above 0")
    products = args.product or [None]
    bad = [name for name in products if name is not None and not is_name(name)]
    if bad:
        raise UsageError(f"--product {bad[0]!r}: a recipe name is {NAME_MEANING}")
    endpoint = _endpoint(args)
    signal.signal(signal.SIGTERM, _interrupt)  # systemd's and a test's stop: counts logged, exit 130
    prefix = args.prefix or f"trig-{datetime.now(UTC):%Y%m%dT%H%M%S}-"
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.IMMEDIATE, 1)  # no queue for a capture that is not there
    socket.setsockopt(zmq.SNDTIMEO, int(args.send_timeout * 1000))
    socket.setsockopt(zmq.LINGER, 2000)
    socket.connect(endpoint)
    sent = not_sent = 0
    bar = _progress(args.count)
    log.info("triggering %s at %.1f/s: parts %s0, %s1, ...", endpoint, args.rate, prefix, prefix)
    try:
        for n in _paced(args.rate, args.count):
            try:
                socket.send_multipart(encode_trigger(f"{prefix}{n}", products[n % len(products)]))
                sent += 1
            except zmq.Again:
                not_sent += 1
                log.warning("part %s%d not triggered: no capture took it within %.1f s", prefix, n,
                            args.send_timeout)  # fmt: skip
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        socket.close()
        context.term()
        log.info("%d triggers sent, %d not sent", sent, not_sent)
    return EXIT_NOT_SENT if not_sent else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
