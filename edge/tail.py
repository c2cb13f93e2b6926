"""edge-tail: print a station's verdicts live, as an MES operator watches them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from edge.cli_support import run_cli, setup_logging
from edge.client import Subscriber
from edge.errors import UsageError
from edge.protocol import VerdictMessage
from edge.security import CurveClient

log = logging.getLogger("edge.tail")
EXIT_NO_TRAFFIC = 3


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-tail",
        description=__doc__.split("\n\n")[0],
        epilog=f"exit codes: 0 done; 2 bad usage; {EXIT_NO_TRAFFIC} silence; 6 bad key file",
    )
    parser.add_argument("endpoint", help="the publisher's PUB endpoint, e.g. tcp://station:5556")
    parser.add_argument("--station", default="", help="only this station (default: all)")
    parser.add_argument("--count", type=int, help="stop after this many verdicts")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="give up after this many seconds without any message, heartbeats included (default 10)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per verdict instead of a line")
    parser.add_argument(
        "--query",
        metavar="ENDPOINT",
        help="the publisher's latest/replay endpoint: verdicts missed in a gap or a restart are fetched",
    )
    parser.add_argument("--client-key", help="CURVE: this subscriber's .key_secret (edge-keys)")
    parser.add_argument("--server-key", help="CURVE: the publisher's public .key")
    args = parser.parse_args(argv)
    setup_logging()
    if (args.client_key is None) != (args.server_key is None):
        raise UsageError("CURVE needs both --client-key and --server-key")
    curve = CurveClient(args.client_key, args.server_key) if args.client_key else None
    shown = 0
    subscriber = Subscriber(
        args.endpoint, args.station, topics=("verdict", "heartbeat"), curve=curve, query_endpoint=args.query
    )
    restarts = 0
    heard = False
    with subscriber:
        for event in subscriber.events(args.timeout):
            if not heard:  # the subscription reached the publisher: nothing published from now is missed
                heard = True
                log.info(
                    "receiving from %s: station %s, publisher epoch %d",
                    args.endpoint,
                    args.station,
                    event.epoch,
                )
            if subscriber.restarts > restarts:  # reported once, on whichever topic shows it first
                restarts = subscriber.restarts
                log.warning(
                    "publisher restarted (epoch %d, restart %d seen); verdicts published while this "
                    "client reconnected are %s",
                    event.epoch,
                    restarts,
                    "fetched (--query)" if args.query else "lost unless fetched (--query)",
                )
            if event.gap:
                log.warning("%d message(s) lost on %s before seq %d", event.gap, event.topic, event.seq)
            if event.verdict is None:
                continue
            verdict = event.verdict
            if args.json:
                record = {**asdict(verdict), "verdict": verdict.verdict.value, "replayed": event.replayed}
                print(json.dumps(record), flush=True)
            else:
                print(_line(verdict), flush=True)
            shown += 1
            if args.count is not None and shown >= args.count:
                return 0
        log.error(
            "nothing heard from %s for %.0f s (lost: %d, restarts: %d)",
            args.endpoint,
            args.timeout,
            subscriber.lost,
            subscriber.restarts,
        )
    return EXIT_NO_TRAFFIC


def _line(verdict: VerdictMessage) -> str:
    """One verdict as an operator reads it: the part, the outcome and why."""
    score = "-" if verdict.score is None else f"{verdict.score:.3f}"
    why = ""
    if verdict.defects:
        largest = max(d["area_px"] for d in verdict.defects)
        why = (f" reason={verdict.reason} region={verdict.region} defects={len(verdict.defects)} "
               f"largest={largest}px peak={verdict.defects[0]['peak']:.3f}")  # fmt: skip
    elif verdict.reason:
        why = f" reason={verdict.reason}"
    return (
        f"{verdict.capture_utc} {verdict.station}/{verdict.camera} {verdict.frame_id} "
        f"part={verdict.part_id or '-'} recipe={verdict.recipe or '-'} {verdict.verdict.value:<7} "
        f"score={score} threshold={verdict.threshold} regions={len(verdict.boxes)}{why}"
        + (f" error={verdict.error}" if verdict.error else "")
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
