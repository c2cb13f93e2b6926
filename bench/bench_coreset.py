"""Coreset selection time at the station's default geometry, printed as a table.

    EDGE_DATA_ROOT=../shared/data python bench/bench_coreset.py            # bottle, seeds 0-2, 3 runs
    python bench/bench_coreset.py --category screw --fraction 0.1 --geometry center_crop

The training images are embedded once; then the coreset (projection, greedy k-center, gathering
the bank rows: what edge-eval reports as `coreset s`) is chosen `--repeats` times per seed and the
median is printed. The issue's budget: bottle at 1 % within 3.5 s on the 2-core development VM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

import torch
from bench_engine import load_images

from edge.engine.backbones import build_backbone
from edge.engine.config import GEOMETRY_MODES, EngineConfig, InputGeometry
from edge.engine.model import PatchCore, embed_images, model_extractor


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--category", default="bottle", help="MVTec category under $EDGE_DATA_ROOT/mvtec")
    parser.add_argument("--fraction", type=float, default=0.01, help="coreset fraction (default 1 %%)")
    parser.add_argument("--geometry", default="auto", choices=GEOMETRY_MODES, help="input geometry")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=3.5, help="seconds; marks rows over it")
    args = parser.parse_args()

    label, train, _ = load_images(args)
    config = EngineConfig(coreset_fraction=args.fraction, geometry=InputGeometry.named(args.geometry))
    config = config.resolved([image.shape[:2] for image in train])
    extractor = model_extractor(config, build_backbone(config.backbone))
    embeddings = embed_images(extractor, config, train)
    rows = [e.reshape(-1, e.shape[-1]) for e in embeddings]
    total = sum(r.shape[0] for r in rows)
    geometry, (height, width) = config.geometry, tuple(embeddings[0].shape[:2])
    print(
        f"data: {label}; {len(train)} training images, geometry {geometry.mode} {geometry.resize} "
        f"({height} x {width} patches each), {total} patches of width {rows[0].shape[1]}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"\n{'seed':>4}{'bank rows':>11}{'median s':>10}  runs (s)")
    worst = 0.0
    for seed in args.seeds:
        seconds, bank_rows = [], 0
        seeded = replace(config, seed=seed)
        for _ in range(args.repeats):
            model = PatchCore.from_embeddings([r.clone() for r in rows], seeded, extractor, {})
            seconds.append(model.info["timings"]["coreset_s"])
            bank_rows = model.bank.shape[0]
        median = statistics.median(seconds)
        worst = max(worst, median)
        flag = "  over budget" if median > args.budget else ""
        print(f"{seed:>4}{bank_rows:>11}{median:>10.2f}  {', '.join(f'{s:.2f}' for s in seconds)}{flag}")
    print(f"\nworst median {worst:.2f} s; budget {args.budget:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
