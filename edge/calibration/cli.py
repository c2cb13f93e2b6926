"""edge-calibrate: build a station's bank and threshold from good frames only, keep its versions.

  edge-calibrate --config station.yaml                 collect good frames from the running capture
  edge-calibrate --from-folder DIR --out BANK_DIR      the same from a folder of good images
  edge-calibrate --add DIR --out BANK_DIR              add confirmed good frames, rebuild, new version
  edge-calibrate --add-candidates --stage --out BANK   the rejects operators cleared (edge-view), staged
  edge-calibrate --activate v0004 --out BANK_DIR       make a staged or an older version active
  edge-calibrate --list --out BANK_DIR                 versions, thresholds, false-reject rates
  ... --validate CATEGORY_DIR --json report.json       false rejects and recall on labelled images

Every new version is written beside the old ones and made active only when complete (with --stage,
only when someone activates it: here, or from edge-view); a worker is told to reload (the
configuration's control endpoint, or --notify).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from edge.bankstore import BankStore, active_drawn_regions
from edge.cli_support import run_cli, setup_logging
from edge.config import CalibrationConfig, StationConfig, describe_errors, load_config
from edge.errors import UsageError
from edge.files import write_bytes_atomic
from edge.imageio import ImageFiles, image_files, read_image
from edge.options import add_model_options, model_settings
from edge.recipe import Recipe

log = logging.getLogger("edge.calibrate")
SILENCE_S = 30.0
EPILOG = (
    "exit codes: 0 done; 2 bad usage or no usable frames; 3 backbone weights missing or foreign; "
    "4 a bank file is unusable; 5 an image cannot be read; 6 invalid configuration; 130 interrupted"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="edge-calibrate",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-folder", type=Path, metavar="DIR", help="good images to calibrate on")
    source.add_argument(
        "--add", type=Path, metavar="DIR", help="confirmed good images to add to the active set"
    )
    source.add_argument(
        "--add-candidates",
        action="store_true",
        help="add the rejects operators cleared as good (the store's candidates/), rebuild, new version",
    )
    source.add_argument(
        "--activate", "--rollback", metavar="VERSION", help="make this version (staged or older) active"
    )
    source.add_argument("--list", action="store_true", help="list the store's versions")
    parser.add_argument("--config", type=Path, help="station configuration (bank store, recipe, endpoints)")
    parser.add_argument("--out", type=Path, metavar="BANK_DIR", help="bank store folder (default: bank.path)")
    parser.add_argument(
        "--product",
        metavar="RECIPE",
        help="with --config: the recipe whose bank to build or switch (default: the first)",
    )
    parser.add_argument(
        "--stage", action="store_true", help="write the new version and report it, but do not activate it"
    )
    parser.add_argument("--by", help="who activates, for the store's history (default: the login name)")
    parser.add_argument(
        "--wait",
        type=float,
        default=SILENCE_S,
        help=f"live: give up after this many seconds without a frame (default {SILENCE_S:.0f})",
    )
    recipe = parser.add_argument_group("recipe (default: the station file's calibration section)")
    add_model_options(recipe, CalibrationConfig)
    parser.add_argument("--weights", help="WideResNet50 weights file")
    parser.add_argument(
        "--validate", type=Path, metavar="CATEGORY_DIR", help="labelled MVTec-format category"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON here")
    parser.add_argument("--notify", metavar="ENDPOINT", help="worker control endpoint to reload")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def _recipe(args: argparse.Namespace, station: StationConfig | None) -> CalibrationConfig:
    base = station.calibration if station else CalibrationConfig()
    overrides = model_settings(args, CalibrationConfig)
    given = {k: v for k, v in overrides.items() if k != "frames"}
    if (args.add or args.add_candidates) and given:
        raise UsageError(
            f"--add rebuilds with the active version's own recipe; it does not take {sorted(given)}"
        )
    merged = base.model_dump() | overrides
    try:
        return CalibrationConfig.model_validate(merged)
    except ValidationError as exc:
        raise UsageError(f"invalid calibration setting: {'; '.join(describe_errors(exc))}") from None


def _folder_frames(folder: Path, limit: int | None) -> ImageFiles:
    """The folder's frames, each read when the calibration asks for it (thousands fit)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of images")
    paths = image_files(folder)[:limit]
    if not paths:
        raise UsageError(f"{folder} holds no images")
    return ImageFiles(paths)


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for this user id (a container, say)
        return "edge-calibrate"


def _candidate_frames(store: BankStore, quiet: bool) -> tuple[list, list[dict[str, Any]]]:
    """The cleared rejects waiting in the store, with their facts (who cleared them, and when)."""
    waiting = store.candidates()
    if not waiting:
        raise UsageError(f"{store.candidates_dir} holds no cleared rejects: nothing to add")
    frames = [read_image(png) for png, _ in tqdm(waiting, desc="read candidates", disable=quiet, leave=False)]
    facts = [{"key": png.stem, **facts} for png, facts in waiting]
    return frames, facts


def _progress_bars(quiet: bool):
    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.total, bar.n = total, done  # a stage may learn its total once it starts
        bar.refresh()

    return update, bars


def _live_frames(station: StationConfig, count: int, wait_s: float, quiet: bool) -> list:
    from edge.calibration.live import collect_frames

    bar = tqdm(total=count, desc="good frames", disable=quiet)

    def show(collected: int, skipped: Counter) -> None:
        bar.n = collected
        bar.set_postfix(dict(skipped))

    frames, skipped = collect_frames(station.endpoints.frames, count, wait_s, show)
    bar.close()
    log.info("collected %d frames from capture; skipped %s", len(frames), dict(skipped) or "none")
    return frames


def _notify(endpoint: str | None, version: str) -> None:
    if not endpoint:
        return
    from edge.client import request_reload

    reply = request_reload(endpoint)
    if reply is None:
        log.info("no worker answered on %s; it loads %s when it starts", endpoint, version)
    elif not reply.get("ok"):
        log.error("the worker could not load %s: %s", version, reply.get("error"))


@dataclass(frozen=True)
class _Session:
    """What every action works on: the parsed options, the station file (if any), the bank store
    and the worker control endpoint to notify."""

    args: argparse.Namespace
    station: StationConfig | None
    store: BankStore
    notify: str | None


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_logging()
    station = load_config(args.config) if args.config else None
    if args.product and station is None:
        raise UsageError("--product names a recipe of the station file: give --config too")
    root = args.out or (Path(station.recipe(args.product).bank.path) if station else None)
    if root is None:
        raise UsageError("say where the bank store is: --out BANK_DIR or --config CONFIG")
    if root.is_file():
        raise UsageError(f"{root} is a bank file, not a bank store folder")
    notify = args.notify or (station.endpoints.control if station else None)
    session = _Session(args, station, BankStore(root), notify)
    builds = bool(args.from_folder or args.add or args.add_candidates)
    if args.list:
        return _list(session)
    if args.stage and not (builds or station):
        raise UsageError("--stage needs a new version: --from-folder, --add, --add-candidates or --config")
    report: dict[str, Any] = {"store": str(root)}
    if args.activate:
        report |= _activate(session)
    elif builds or (station and not args.validate):
        report |= _build(session)
    elif not args.validate:
        raise UsageError(
            "nothing to do: give --from-folder, --add, --add-candidates, --activate, --list, --validate "
            "or --config"
        )
    if args.validate:
        report |= _validate(session)
    if args.json:
        write_bytes_atomic(args.json, json.dumps(report, indent=2).encode())
    return 0


def _list(session: _Session) -> int:
    if not session.store.versions():
        raise UsageError(
            f"{session.store.root} holds no bank versions: is it the folder edge-calibrate --out wrote?"
        )
    print(json.dumps(session.store.reports(), indent=2))
    return 0


def _activate(session: _Session) -> dict[str, Any]:
    version = session.args.activate
    session.store.activate(version, session.args.by or _login())
    log.info("%s is active", version)
    _notify(session.notify, version)
    return {"version": version}


def _build(session: _Session) -> dict[str, Any]:
    """A new bank version from a folder, the store's candidates or the live cameras."""
    from edge.calibration.procedure import calibrate

    args, station, store = session.args, session.station, session.store
    recipe = _recipe(args, station)
    candidates = None
    if args.add_candidates:
        frames, candidates = _candidate_frames(store, args.quiet)
    elif args.add or args.from_folder:
        frames = _folder_frames(args.add or args.from_folder, args.frames)
    else:
        assert station is not None
        frames = _live_frames(station, recipe.frames, args.wait, args.quiet)
    update, bars = _progress_bars(args.quiet)
    result = calibrate(
        store,
        frames,
        recipe,
        args.weights or (station.weights if station else None),
        bool(args.add or args.add_candidates),
        update,
        activate=not args.stage,
        candidates=candidates,
        regions=_regions(session),
    )
    for bar in bars.values():
        bar.close()
    choice = result.record["choice"]
    log.info(
        "%s %s: threshold %.4g from %d held-out good frames (%s); expected false-reject rate "
        "%.1f%% (95%% bound %.1f%%), target %.1f%%, margin %.0f%%",
        result.version,
        "staged (activate it with --activate or from edge-view)" if args.stage else "active",
        result.record["threshold"],
        choice["held_out"],
        choice["method"],
        100 * choice["expected_frr"],
        100 * choice["frr_upper_95"],
        100 * choice["target_frr"],
        100 * choice["margin"],
    )
    regions = result.record.get("regions")
    if regions is not None:
        for name, region in regions["thresholds"].items():
            rate, bound = 100 * region["expected_frr"], 100 * region["frr_upper_95"]
            log.info("region %s: threshold %.4g, expected false-reject rate %.1f%% (95%% bound %.1f%%)",
                     name, region["threshold"], rate, bound)  # fmt: skip
        part = regions["part"]
        log.info("the part (any region): expected false-reject rate %.1f%% (95%% bound %.1f%%) on %d frames",
                 100 * part["expected_frr"], 100 * part["frr_upper_95"], part["held_out"])  # fmt: skip
    if not args.stage:
        _notify(session.notify, result.version)
    return {
        "regions": regions,
        "version": result.version,
        "threshold": result.record["threshold"],
        "expected_false_reject_rate": choice["expected_frr"],
        "false_reject_rate_upper_95": choice["frr_upper_95"],
        "held_out": choice["held_out"],
        "method": choice["method"],
        "frames": len(result.record["frames"]),
        "quality": result.record["quality"],
        "warnings": result.warnings,
        "active": not args.stage,
        "candidates": result.record.get("candidates"),
    }


def _regions(session: _Session) -> Recipe | None:
    """The recipe whose regions get thresholds of their own: the product's, with the regions drawn
    on edge-view where the active version carries them (the new version carries them on)."""
    station = session.station
    if station is None:
        return None
    drawn = active_drawn_regions(session.store.root)
    return station.with_drawn(station.recipe(session.args.product), drawn).spec()


def _validate(session: _Session) -> dict[str, Any]:
    """The active version's false rejects and recall on a labelled MVTec-format category."""
    from edge.calibration.validate import validate
    from edge.engine.artifact import load_model

    args, store = session.args, session.store
    model = load_model(store.active().path, args.weights)
    bar = tqdm(desc="validate", disable=args.quiet, leave=False)

    def show(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    outcome = validate(model, args.validate, show)
    bar.close()
    log.info(
        "%s: threshold %.4g, false-reject rate %.3f (%d of %d good), recall %.3f (%d defective)",
        args.validate,
        outcome["threshold"],
        outcome["false_reject_rate"] or 0.0,
        outcome["false_rejects"],
        outcome["good_images"],
        outcome["recall"] or 0.0,
        outcome["defective_images"],
    )
    return outcome | {"version": store.active_version()}


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
