"""edge-eval: fit and score MVTec-format categories; print a table and write JSON."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.cli_support import run_cli, setup_logging
from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.input_geometry import GEOMETRY_MODES
from edge.errors import UsageError
from edge.eval.mvtec import load_category
from edge.files import write_bytes_atomic
from edge.options import add_engine_options, engine_settings

log = logging.getLogger("edge.eval")
TABLE_COLUMNS = [
    ("image_auroc", "img AUROC", ".3f"),
    ("pixel_auroc", "px AUROC", ".3f"),
    ("pro", "PRO", ".3f"),
    ("fit_s", "fit s", ".1f"),
    ("extract_s", "extract s", ".1f"),
    ("coreset_s", "coreset s", ".2f"),
    ("images_per_s", "img/s", ".1f"),
    ("latency_ms_b1", "b1 ms", ".1f"),
    ("peak_rss_mb", "peak MB", ".0f"),
    ("bank_rows", "bank", "d"),
]
MEAN_KEYS = [key for key, _, fmt in TABLE_COLUMNS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="edge-eval",
        description="Fit PatchCore on each category's train/good images, score its test images, and "
        "report image AUROC, pixel AUROC, PRO (to 30% FPR), speed and memory.",
    )
    parser.add_argument("root", type=Path, help="folder in MVTec AD layout (CAT/train/good, CAT/test/...)")
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="CAT",
        help="categories to evaluate (default: every sub-folder of ROOT)",
    )
    parser.add_argument("--weights", help="weights file for wide_resnet50_2 (default: the torch hub cache)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run on untrained weights (timing only: the accuracy means nothing)",
    )
    parser.add_argument(
        "--geometry",
        choices=GEOMETRY_MODES,
        default="auto",
        help="how a frame becomes the network input (default auto: the whole frame at its own "
        "resolution within bounds, chosen from the training frames, docs/engine.md); "
        "center_crop: shorter side --resize, centre crop --crop; full_frame: shorter side "
        "--resize; area: about --resize² pixels, aspect kept; squash: --resize x --resize",
    )
    parser.add_argument("--resize", type=int, help="input size in pixels (see --geometry)")
    parser.add_argument("--crop", type=int, default=224, help="centre crop size (default 224, as the paper)")
    parser.add_argument(
        "--full-frame",
        action="store_true",
        help="the same as --geometry full_frame --resize 224 (the whole frame, shorter side 224)",
    )
    add_engine_options(parser)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def build_geometry(args: argparse.Namespace) -> InputGeometry:
    if args.full_frame:
        return InputGeometry.full_frame(args.resize or 224)
    geometry = InputGeometry.named(args.geometry, args.resize)
    return replace(geometry, crop=args.crop) if geometry.mode == "center_crop" else geometry


def build_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(geometry=build_geometry(args), **engine_settings(args))


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = f"{'category':<14}" + "".join(f"{title:>11}" for _, title, _ in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        cells = "".join(f"{_fmt(row.get(key), fmt):>11}" for key, _, fmt in TABLE_COLUMNS)
        lines.append(f"{name:<14}{cells}")
    return "\n".join(lines)


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(round(value) if fmt == "d" else value, fmt)


def mean_row(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    row = {}
    for key in MEAN_KEYS:
        values = [r[key] for r in results.values() if not math.isnan(float(r[key]))]
        row[key] = sum(values) / len(values) if values else float("nan")
    return row


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    import torch

    from edge.eval.runner import EvalOptions, evaluate_category

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.root.is_dir():
        raise UsageError(f"{args.root} is not a folder")
    names = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train" / "good").is_dir())
    if not names:
        raise UsageError(f"{args.root} holds no category in MVTec layout (CAT/train/good)")
    categories = [load_category(args.root, name) for name in names]
    options = EvalOptions(build_config(args), args.weights, args.random_weights, progress=not args.quiet)
    results: dict[str, dict[str, Any]] = {}
    for category in categories:
        results[category.name] = evaluate_category(category, options)
        log.info(
            "%s done: image AUROC %.3f, pixel AUROC %.3f, PRO %.3f",
            category.name,
            results[category.name]["image_auroc"],
            results[category.name]["pixel_auroc"],
            results[category.name]["pro"],
        )
    table = dict(results)
    if len(results) > 1:
        table["mean"] = mean_row(results)
    if args.random_weights:
        print("WARNING: random, untrained backbone weights: accuracy figures are meaningless")
    print(format_table(table))
    if args.json:
        payload = {
            "config": options.config.to_dict(),
            "random_weights": args.random_weights,
            "threads": torch.get_num_threads(),
            "categories": results,
            "mean": mean_row(results),
        }
        write_bytes_atomic(args.json, json.dumps(payload, indent=2).encode())
        log.info("wrote %s", args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
