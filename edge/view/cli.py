"""edge-view: a live page of a station's verdicts, masks and health, for the people at the line.

Bound to 127.0.0.1 unless --bind says otherwise (for other PCs, put the plant's reverse proxy
with TLS in front of it), and read-only unless --tokens names who may act: operators clear rejects
as good parts (into the bank store's candidates), engineers also build and activate bank versions,
and, with --config, draw a recipe's regions, see what they would change and stage them. It
subscribes to the publisher like any client, so it runs anywhere the light install does
(`pip install 'edge[view]'`; no torch); frames under the masks and the actions need the station's
folders (--recent, --store), so run it on the station for those.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
from functools import partial
from pathlib import Path

from edge.bankstore import BankStore
from edge.cli_support import run_cli, setup_logging
from edge.client import Subscriber
from edge.config import load_config
from edge.errors import UsageError
from edge.recent import RecentFrames
from edge.security import CurveClient
from edge.view.access import Access
from edge.view.actions import Actions
from edge.view.recipes import RecipeEditor
from edge.view.server import serve  # aiohttp (the `view` extra): edge.commands names it when missing


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-view",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 stopped; 2 bad usage (a message says what)",
    )
    parser.add_argument("endpoint", help="the publisher's PUB endpoint, e.g. tcp://station:5556")
    parser.add_argument("--station", required=True, help="the station to show")
    parser.add_argument("--query", metavar="ENDPOINT", help="the publisher's latest/replay endpoint")
    parser.add_argument("--bind", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="the station file: its recipes (regions drawn and staged here), their bank stores, its "
        "recent frames and control endpoint (the options below, where not given)",
    )  # fmt: skip
    parser.add_argument("--recent", metavar="DIR", help="the station's recent_frames.path (frames)")
    parser.add_argument("--store", metavar="DIR", help="the station's bank store (bank.path)")
    parser.add_argument("--control", metavar="ENDPOINT", help="the worker's or broker's control endpoint")
    parser.add_argument("--tokens", metavar="FILE", help="who may act: `name role token` lines")
    parser.add_argument("--client-key", help="CURVE: this subscriber's .key_secret (edge-keys)")
    parser.add_argument("--server-key", help="CURVE: the publisher's public .key")
    args = parser.parse_args(argv)
    setup_logging()
    faulthandler.enable()
    if (args.client_key is None) != (args.server_key is None):
        raise UsageError("CURVE needs both --client-key and --server-key")
    curve = CurveClient(args.client_key, args.server_key) if args.client_key else None
    subscriber = partial(
        Subscriber, args.endpoint, args.station, ("verdict", "mask", "heartbeat"), curve=curve,
        query_endpoint=args.query,
    )  # fmt: skip
    access = Access.from_file(args.tokens) if args.tokens else Access()
    if args.store and not BankStore(args.store).versions_dir.is_dir():
        raise UsageError(f"--store {args.store} is not a bank store (edge-calibrate's output folder)")
    station = load_config(args.config) if args.config else None
    recent = args.recent or (station.recent_frames.path if station and station.recent_frames else None)
    ring = RecentFrames(recent) if recent else None
    stores = {r.name: BankStore(r.bank.path) for r in station.recipe_list} if station else {}
    store = BankStore(args.store) if args.store else next(iter(stores.values()), None)
    control = args.control or (station.endpoints.control if station else None)
    actions = Actions(store, ring, control, stores=stores, config_path=args.config)
    editor = RecipeEditor(station, args.config, ring) if station else None
    serve(subscriber, args.station, args.bind, args.port, actions, access, editor)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
