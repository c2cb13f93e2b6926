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
from edge.engine.backbones import BACKBONES, backbone_name
from edge.engine.config import (
    EXTRACTOR_PRECISIONS,
    EXTRACTORS,
    IMAGE_SCORES,
    PROJECTIONS,
    SEARCH_BACKENDS,
    SEARCH_PRECISIONS,
    EngineConfig,
    InputGeometry,
)
from edge.engine.input_geometry import GEOMETRY_MODES
from edge.errors import UsageError
from edge.eval.mvtec import load_category
from edge.files import write_bytes_atomic

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
        "report image AUROC, pixel AUROC, PRO (to 30%% FPR), speed and memory.",
    )
    parser.add_argument("root", type=Path, help="folder in MVTec AD layout (CAT/train/good, CAT/test/...)")
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="CAT",
        help="categories to evaluate (default: every sub-folder of ROOT)",
    )
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        type=backbone_name,
        help=f"one of {', '.join(BACKBONES)}, or several joined by + for an ensemble "
        "(default efficientnet_lite0)",
    )
    parser.add_argument("--weights", help="weights file for wide_resnet50_2 (default: the torch hub cache)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run on untrained weights (timing only: the accuracy means nothing)",
    )
    parser.add_argument(
        "--coreset",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="coreset fraction in (0, 1]; 0.01 is PatchCore-1%% (default)",
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
    parser.add_argument(
        "--projection-dim",
        type=int,
        default=128,
        help="projection width for coreset selection (default 128)",
    )
    parser.add_argument(
        "--projection",
        choices=PROJECTIONS,
        default=EngineConfig.projection,
        help="how features are projected for coreset selection: pca (principal axes of a sample of "
        f"the training patches) or random (Gaussian, the paper's) (default {EngineConfig.projection})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument(
        "--search",
        default="auto",
        choices=SEARCH_BACKENDS,
        help="nearest-neighbour search: projected (candidates on the bank's principal axes, measured "
        "exactly), exact, or faiss's flat index; auto: projected on the CPU, exact on a GPU",
    )
    parser.add_argument(
        "--search-precision",
        default="auto",
        choices=SEARCH_PRECISIONS,
        help="torch search products: bf16 finds candidates that fp32 then measures exactly "
        "(auto: bf16 where the CPU has native bf16, else fp32)",
    )
    parser.add_argument(
        "--extractor",
        default="auto",
        choices=EXTRACTORS,
        help="feature extraction runtime (auto: on the CPU the installed runtime measured fastest for "
        "the backbone, OpenVINO for EfficientNet-Lite; torch on CUDA; tensorrt needs a fixed input "
        "size, a GPU and edge[gpu])",
    )
    parser.add_argument(
        "--extractor-precision", default="fp32", choices=EXTRACTOR_PRECISIONS, help="fp16/bf16: CUDA only"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--image-score",
        choices=IMAGE_SCORES,
        default=EngineConfig.image_score,
        help="map_max: the peak of the smoothed anomaly map; eq7: the largest patch distance with "
        f"the paper's eq. 7 (default {EngineConfig.image_score})",
    )
    parser.add_argument("--no-reweight", action="store_true", help="eq7 image score without eq. 7's factor")
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
    geometry = build_geometry(args)
    return EngineConfig(
        backbone=args.backbone,
        geometry=geometry,
        coreset_fraction=args.coreset,
        projection_dim=args.projection_dim,
        projection=args.projection,
        seed=args.seed,
        image_score=args.image_score,
        reweight=not args.no_reweight,
        search=args.search,
        search_precision=args.search_precision,
        device=args.device,
        batch_size=args.batch_size,
        extractor=args.extractor,
        extractor_precision=args.extractor_precision,
    )


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
    setup_logging(fitting=True)
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
