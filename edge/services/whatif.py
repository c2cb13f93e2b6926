"""edge-what-if: what new regions for a recipe would do to the parts the station kept.

Each frame of the recent-frames ring that the recipe judged is judged again with the recipe's
active bank, twice, the way the worker judges (edge.pipeline.inspection.inspect): by the regions in
force and by the proposed ones, so a difference is the regions' alone. edge-view runs it, at the
lowest CPU priority, before an engineer stages regions drawn on the page; on the station an engineer
can run it on a regions file (YAML or JSON: `frame: {width, height}` and `regions: [...]`, as in
the station file's recipes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from edge.cli_support import run_cli, setup_logging
from edge.config import RecipeConfig, StationConfig, load_config
from edge.errors import UsageError
from edge.files import write_bytes_atomic
from edge.protocol import VerdictMessage
from edge.recent import RecentFrame, RecentFrames

log = logging.getLogger("edge.whatif")
FRAMES = 100  # the newest frames of the recipe judged again (two inspections each)
VERDICT_FACTS = ("verdict", "reason", "region", "score", "error")


def what_if(
    config: StationConfig,
    recipe_name: str,
    proposal: dict[str, Any],
    ring: RecentFrames,
    limit: int = FRAMES,
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """The recipe's newest `limit` kept frames judged by its regions now and by `proposal`: the
    counts of each verdict both ways and every part whose verdict would change. ConfigError when
    the proposal breaks a rule of the station file's regions."""
    from edge.pipeline.inspection import RecipeBook, inspect
    from edge.pipeline.judgement import RecipeRegions
    from edge.services.worker import load_recipe, region_thresholds

    recipe = config.recipe(recipe_name)
    proposed = config.with_drawn(recipe, proposal)  # refused before anything loads
    default = config.recipe().name
    frames = ring.newest(limit, lambda verdict: (verdict.get("recipe") or default) == recipe_name)
    now = load_recipe(config, recipe)
    calibrated = region_thresholds(proposed, now.model.info, now.bank_id) if proposed.regions else None
    regions = RecipeRegions(proposed.spec(), now.threshold, calibrated) if proposed.regions else None
    books = [RecipeBook([bank], config.mm_per_px) for bank in (now, replace(now, regions=regions))]
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    changed = []
    if progress is not None:
        progress.reset(total=len(frames))
    for frame in frames:
        header, image = _frame(config.station, frame)
        seen = [inspect([(header, image)], book)[0].verdict for book in books]
        facts = [_facts(verdict) for verdict in seen]
        before[facts[0]["verdict"]] += 1
        after[facts[1]["verdict"]] += 1
        if facts[0]["verdict"] != facts[1]["verdict"] or facts[0]["region"] != facts[1]["region"]:
            changed.append({
                "camera": frame.camera, "frame_id": header.frame_id, "part_id": header.part_id,
                "capture_utc": header.capture_utc, "station_said": frame.verdict.get("verdict"),
                "before": facts[0], "after": facts[1],
            })  # fmt: skip
        if progress is not None:
            progress.update()
    return {
        "recipe": recipe_name,
        "frames": len(frames),
        "bank": f"{now.bank_id} {now.version}",
        "region_thresholds": "calibrated" if calibrated else "the bank's",
        "before": dict(before),
        "after": dict(after),
        "verdicts_changed": sum(c["before"]["verdict"] != c["after"]["verdict"] for c in changed),
        "changed": changed,
    }


def _facts(verdict: VerdictMessage) -> dict[str, Any]:
    return {k: getattr(verdict, k) for k in VERDICT_FACTS} | {"verdict": verdict.verdict.value}


def _frame(station: str, frame: RecentFrame) -> tuple[Any, Any]:
    """A kept frame as the worker received it: its header (no deadline: it is judged again, not
    late) and its pixels."""
    from edge.imageio import read_image
    from edge.protocol import FrameHeader

    image = read_image(frame.png)
    said = frame.verdict
    header = FrameHeader(
        station=station, camera=frame.camera, seq=0, frame_id=str(said.get("frame_id")),
        capture_utc=str(said.get("capture_utc")), capture_monotonic_ns=0, height=image.shape[0],
        width=image.shape[1], channels=1 if image.ndim == 2 else 3, part_id=said.get("part_id"),
        product=said.get("recipe"),
    )  # fmt: skip
    return header, image


def read_proposal(path: Path) -> dict[str, Any]:
    """A regions file: a mapping with `frame` and `regions` (YAML, or JSON, which YAML reads)."""
    try:
        proposal = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the regions file {path}: {exc}") from None
    if not isinstance(proposal, dict) or set(proposal) - {"frame", "regions"}:
        raise UsageError(f"{path}: expected a mapping with frame and regions (only)")
    return proposal


def _print(report: dict[str, Any]) -> None:
    print(f"recipe {report['recipe']}, bank {report['bank']}: {report['frames']} kept frames judged again "
          f"(region thresholds: {report['region_thresholds']})")  # fmt: skip
    print(f"  now:      {report['before']}\n  proposed: {report['after']}")
    for change in report["changed"]:
        was, will = change["before"], change["after"]
        print(f"  {change['camera']} {change['frame_id']}: {was['verdict']} ({was['region'] or '-'}) -> "
              f"{will['verdict']} ({will['region'] or '-'})")  # fmt: skip


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-what-if",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 judged; 1 failed; 2 bad usage (a message says what)",
    )
    parser.add_argument("config", type=Path, help="the station file")
    parser.add_argument("--recipe", help="the recipe (default: the first)")
    parser.add_argument("--regions", type=Path, required=True, help="the proposed regions (YAML or JSON)")
    parser.add_argument("--frames", type=int, default=FRAMES, help=f"newest frames judged (default {FRAMES})")
    parser.add_argument("--json", type=Path, help="also write the report here (JSON)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config(args.config)
    if config.recent_frames is None:
        raise UsageError(f"{args.config} keeps no recent frames (recent_frames): nothing to judge again")
    if args.frames < 1:
        raise UsageError("--frames must be at least 1")
    recipe: RecipeConfig = config.recipe(args.recipe)
    proposal = read_proposal(args.regions)
    ring = RecentFrames(config.recent_frames.path)
    with tqdm(desc="judge again", total=args.frames, disable=args.quiet, leave=False) as bar:
        report = what_if(config, recipe.name, proposal, ring, args.frames, bar)
    if args.json:
        write_bytes_atomic(args.json, json.dumps(report, indent=1).encode())
    if not args.quiet:
        _print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
