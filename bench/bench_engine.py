"""Engine benchmark: per-stage milliseconds per image, fit time and peak memory, printed as tables.

    python bench/bench_engine.py                 # bottle from $EDGE_DATA_ROOT/mvtec, else synthetic parts
    python bench/bench_engine.py --skip-wrn      # EfficientNet-Lite0 only
    python bench/bench_engine.py --extractors openvino torch   # some runtimes (default: every installed)
    python bench/bench_engine.py --searches projected          # some searches (default: projected, exact)

Each scoring row names its runtime and search; the recall column is the share of the timed test
patches whose distance equals the true nearest one (float64 brute force) within 1e-4 relative.

WideResNet50 runs on random weights unless --wrn-weights names the real file: its timings are
real, its scores are not, and every row says so. The extractor-alone column is the extractor's
call (network and aggregation) on the same batch, timed in the same run, so the end-to-end
overhead (search, eq. 7, maps) is a measured ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge.engine.backbones import Backbone, build_backbone
from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.embedding import model_extractor
from edge.engine.input_geometry import GEOMETRY_MODES
from edge.engine.model import PatchCore, StageTimer
from edge.engine.search import reference_distances
from edge.eval.mvtec import load_category
from edge.eval.synthetic import SynthSpec, generate
from edge.imageio import read_image
from edge.memory import peak_rss_mb, reset_peak_rss, tune_allocator

STAGES = ("preprocess", "extract", "search", "map")


def load_images(args: argparse.Namespace) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    root = os.environ.get("EDGE_DATA_ROOT")
    if root and (Path(root) / "mvtec" / args.category).is_dir():
        category = load_category(Path(root) / "mvtec", args.category)
        label = f"MVTec {args.category}"
    else:
        folder = Path(tempfile.mkdtemp(prefix="edge-bench-"))
        generate(
            folder, "part", SynthSpec(size=320, train=209, test_good=20, test_per_defect=20), progress=False
        )
        category = load_category(folder, "part")
        label = "synthetic parts (EDGE_DATA_ROOT unset)"
    train = [read_image(p) for p in category.train]
    test = [read_image(s.path) for s in category.test]
    return label, train, test


def installed_extractors() -> list[str]:
    return ["torch"] + [kind for kind in ("openvino", "onnxruntime") if importlib.util.find_spec(kind)]


def recall(model: PatchCore, images: list[np.ndarray]) -> float:
    """Share of the images' patches whose distance under `model`'s search equals the true nearest
    distance (float64 brute force) within 1e-4 relative."""
    embeddings = [e.reshape(-1, e.shape[-1]) * model.column_scales for e in model.embed(images)]
    patches = torch.cat(embeddings)
    found = model.index.search(patches, k=1)[0][:, 0].double()
    truth = reference_distances(model.bank, patches)
    return float((found <= truth * (1 + 1e-4) + 1e-6).double().mean())


def time_scoring(model: PatchCore, images: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    """ms per image per stage, end to end, and for the extractor alone, on the same batches."""
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    model.score(batches[0])  # warm-up: kernel selection and caches
    timer = StageTimer(model.device)
    wall, alone = [], []
    for _ in range(repeats):
        for chunk in batches:
            start = time.perf_counter()
            model.score(chunk, timer)
            wall.append(time.perf_counter() - start)
            pixels = np.stack([model._prepare(image).pixels for image in chunk])
            start = time.perf_counter()
            model.extractor(pixels)
            alone.append(time.perf_counter() - start)
    count = len(wall) * batch
    row = {stage: timer.seconds[stage] * 1000 / count for stage in STAGES}
    row["e2e"] = sum(wall) * 1000 / count
    row["extractor_alone"] = sum(alone) * 1000 / count
    row["e2e_median_batch_ms"] = statistics.median(wall) * 1000
    return row


def backbone_of(model: PatchCore, weights: str | None) -> Backbone:
    return build_backbone(model.config.backbone, weights, model.extractor.random_weights)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--test-images", type=int, default=48, help="test images timed per setting")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--wrn-train", type=int, default=40, help="training images for WideResNet50 fits")
    parser.add_argument("--wrn-test-images", type=int, default=8, help="test images timed for WideResNet50")
    parser.add_argument("--wrn-weights", help="real wide_resnet50_2 weights (default: random, timing only)")
    parser.add_argument("--skip-wrn", action="store_true")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01])
    parser.add_argument(
        "--geometry",
        default="auto",
        choices=GEOMETRY_MODES,
        help="input geometry (default auto, the default of edge-eval and the station; center_crop: "
        "the paper's 224 px input)",
    )
    parser.add_argument(
        "--extractors",
        nargs="+",
        default=installed_extractors(),
        choices=["torch", "onnxruntime", "openvino"],
    )
    parser.add_argument(
        "--searches", nargs="+", default=["projected", "exact"], choices=["projected", "exact"]
    )
    args = parser.parse_args()
    tune_allocator()  # as every edge command does at start-up (edge.cli_support.setup_logging)

    label, train, test = load_images(args)
    test = test[: args.test_images]
    print(
        f"data: {label}; {len(train)} training images, {len(test)} timed test images; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    backbones = [("efficientnet_lite0", None, False, len(train), test)]
    if not args.skip_wrn:
        wrn = ("wide_resnet50_2", args.wrn_weights, args.wrn_weights is None, args.wrn_train)
        backbones.append((*wrn, test[: args.wrn_test_images]))

    fit_rows, score_rows = [], []
    for name, weights, random_weights, n_train, timed in backbones:
        for fraction in args.fractions:
            reset_peak_rss()
            start = time.perf_counter()
            model = PatchCore.fit(
                train[:n_train],
                EngineConfig(
                    backbone=name, coreset_fraction=fraction, geometry=InputGeometry.named(args.geometry)
                ),
                weights=weights,
                random_weights=random_weights,
            )
            fit_s = time.perf_counter() - start
            tag = f"{name}{' (RANDOM weights: timing only)' if random_weights else ''}"
            fit_rows.append(
                (
                    tag,
                    fraction,
                    n_train,
                    model.info["timings"]["extract_s"],
                    model.info["timings"]["coreset_s"],
                    fit_s,
                    peak_rss_mb(),
                    tuple(model.bank.shape),
                )
            )
            for kind in args.extractors:
                extractor = model_extractor(
                    replace(model.config, extractor=kind), backbone_of(model, weights)
                )
                for search in args.searches:
                    config = replace(model.config, extractor=kind, search=search)
                    variant = PatchCore(config, extractor, model.bank, model.level_scales, model.info)
                    found = recall(variant, timed[:16])
                    for batch in (1, 8):
                        row = time_scoring(variant, timed, batch, args.repeats)
                        row["recall"] = found
                        score_rows.append((f"{tag} {extractor.name} {search}", fraction, batch, row))
            del model

    print("\nFit (extraction includes reading nothing: images are decoded beforehand)")
    print(
        f"{'backbone':<64}{'coreset':>8}{'images':>8}{'extract s':>11}{'coreset s':>11}{'fit s':>8}"
        f"{'peak MB':>9}  bank"
    )
    for tag, fraction, n, extract_s, coreset_s, fit_s, rss, shape in fit_rows:
        print(
            f"{tag:<64}{fraction:>8.0%}{n:>8}{extract_s:>11.2f}{coreset_s:>11.2f}{fit_s:>8.2f}{rss:>9.0f}  "
            f"{shape[0]}x{shape[1]}"
        )

    print("\nScoring, ms per image (decoded image in, score and anomaly map out; 2-core VM: compare rows")
    print("of one run, or medians of three)")
    header = (
        f"{'backbone':<64}{'coreset':>8}{'batch':>6}"
        + "".join(f"{s:>12}" for s in STAGES)
        + f"{'end-to-end':>12}{'extr alone':>11}{'ratio':>7}{'img/s':>8}{'recall':>8}"
    )
    print(header)
    for tag, fraction, batch, row in score_rows:
        stages = "".join(f"{row[s]:>12.2f}" for s in STAGES)
        print(
            f"{tag:<64}{fraction:>8.0%}{batch:>6}{stages}{row['e2e']:>12.2f}{row['extractor_alone']:>11.2f}"
            f"{row['e2e'] / row['extractor_alone']:>7.2f}{1000 / row['e2e']:>8.1f}{row['recall']:>8.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
