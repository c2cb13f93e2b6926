"""The GPU device check: what edge's extractor, search and scoring do on the device at hand.

Runs with the project's code under whatever torch the machine has (the lent GPU machine's image:
torch 2.11, no faiss, no TensorRT, nothing installable), says what is missing instead of failing,
and ends well within 5 minutes. Measures, on CUDA when there is one (else the CPU):

- extractor images/s at batch 1/8/32/64 and batch-1 p50/p99 latency, for WideResNet50 (random
  weights: timing only, labelled) and EfficientNet-Lite0 (its real weights when the package or
  --lite0-weights gives them), for torch fp32/fp16/bf16 and ONNX Runtime where it runs;
- parity against CPU fp32: embeddings, nearest-neighbour distances and image scores for fp32,
  TF32, fp16 and bf16 extraction;
- search against 1 % and 10 % bottle-sized banks (1,639 and 16,390 rows), one image at a time (the
  old path) and one search per batch (the new one), fp32 and bf16 products;
- end to end (extract, search, eq. 7, grid download, maps) one image per call against batches.

One JSON file (--out, default $OUT or out/) and a printed table. `--smoke` runs the same code on a
few small inputs on the CPU (CI runs it).

    python bench/device_check.py [--smoke] [--out DIR] [--lite0-weights FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.engine.backbones import Backbone, build_backbone
from edge.engine.config import EngineConfig, InputGeometry
from edge.engine.extractors import OnnxExtractor, TorchExtractor, synchronize
from edge.engine.model import PatchCore
from edge.engine.search import TorchIndex

BOTTLE_PATCHES = 209 * 28 * 28  # bottle's training images x patches per 224-pixel image


def timed(run, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call, the device synchronised around every call (one warm-up first)."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def backbones(smoke: bool, lite0_weights: str | None, notes: list[str]) -> dict[str, Backbone]:
    found = {
        "wide_resnet50_2 (random weights, timing only)": build_backbone(
            "wide_resnet50_2", random_weights=True
        )
    }
    if lite0_weights:
        os.environ["EDGE_LITE0_WEIGHTS"] = lite0_weights
    try:
        found["efficientnet_lite0"] = build_backbone("efficientnet_lite0")
    except Exception as exc:  # the package with the weights may not be on this machine
        notes.append(f"efficientnet_lite0 weights unavailable ({exc}); Lite0 measured with random weights")
        found["efficientnet_lite0 (random weights)"] = build_backbone(
            "efficientnet_lite0", random_weights=True
        )
    if smoke:
        found = dict(list(found.items())[-1:])  # Lite0 only: the CPU is slow
    return found


def extractors(backbone: Backbone, device: torch.device, side: int, cache: Path, notes: list[str]) -> dict:
    found = {"torch-fp32": TorchExtractor(backbone, str(device))}
    if device.type == "cuda":
        for precision in ("fp16", "bf16"):
            found[f"torch-{precision}"] = TorchExtractor(backbone, str(device), precision)
    try:
        found["onnxruntime"] = OnnxExtractor(backbone, (side, side), cache, str(device))
    except Exception as exc:
        notes.append(f"onnxruntime on {device.type} not measured: {str(exc).splitlines()[0]}")
    try:
        found["tensorrt"] = OnnxExtractor(backbone, (side, side), cache, str(device), tensorrt=True)
    except Exception as exc:
        notes.append(f"tensorrt not measured: {str(exc).splitlines()[0]}")
    return found


def extractor_speed(args, device, side, cache, notes) -> list[dict]:
    rows = []
    batches = (1, 2) if args.smoke else (1, 8, 32, 64)
    for label, backbone in backbones(args.smoke, args.lite0_weights, notes).items():
        for name, extractor in extractors(backbone, device, side, cache, notes).items():
            row = {"backbone": label, "extractor": name}
            for batch in batches:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, side, side, 3), np.uint8)
                times = timed(lambda p=pixels, e=extractor: e(p), args.repeats, device)
                row[f"images_per_s_b{batch}"] = batch / statistics.median(times)
                if batch == 1:
                    row["b1_p50_ms"] = 1000 * statistics.median(times)
                    row["b1_p99_ms"] = 1000 * float(np.percentile(times, 99))
            rows.append(row)
    return rows


def parity(args, device, side, notes) -> list[dict]:
    """Each precision on the device against CPU fp32: embeddings, distances, image scores."""
    backbone = next(iter(backbones(args.smoke, args.lite0_weights, notes).values()))
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, (4 if args.smoke else 16, side, side, 3), np.uint8)
    test = rng.integers(0, 256, (2 if args.smoke else 16, side, side, 3), np.uint8)
    config = EngineConfig(geometry=InputGeometry(side, side), coreset_fraction=0.1, extractor="torch")
    reference = PatchCore.fit(list(train), config)  # CPU fp32
    ref_embed = reference.extractor(test)
    ref_results = reference.score(list(test))
    rows = []
    if device.type != "cuda":
        notes.append("parity: no CUDA device, only CPU fp32 against itself")
    modes = ["fp32", "tf32", "fp16", "bf16"] if device.type == "cuda" else ["fp32"]
    for mode in modes:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        precision = mode if mode in ("fp16", "bf16") else "fp32"
        extractor = TorchExtractor(backbone, str(device), precision)
        model = PatchCore(
            replace(config, device=str(device)),
            extractor,
            reference.bank,
            reference.level_scales,
            {},
        )
        embed = extractor(test).cpu()
        results = model.score(list(test))
        scores = np.array([r.score for r in results])
        ref_scores = np.array([r.score for r in ref_results])
        rows.append(
            {
                "mode": mode,
                "embedding_rel_err": float((embed - ref_embed).abs().max() / ref_embed.abs().max()),
                "score_rel_err": float(np.max(np.abs(scores - ref_scores) / ref_scores)),
                "map_rel_err": float(
                    max(
                        np.abs(r.anomaly_map - q.anomaly_map).max() / q.anomaly_map.max()
                        for r, q in zip(results, ref_results, strict=True)
                    )
                ),
            }
        )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def search_speed(args, device) -> list[dict]:
    rows = []
    dim = 472 if args.smoke else 1024 + 1024
    images = 4 if args.smoke else 64
    patches = 64 if args.smoke else 784
    for share in (0.01, 0.1):
        bank_rows = max(64, int(share * (2_000 if args.smoke else BOTTLE_PATCHES)))
        bank = torch.randn(bank_rows, dim, device=device)
        queries = torch.randn(images, patches, dim, device=device)
        for precision in ("fp32", "bf16"):
            index = TorchIndex(bank, device, precision)
            one = timed(lambda i=index, qs=queries: [i.search(q, k=1) for q in qs], args.repeats, device)
            batched = timed(
                lambda i=index, qs=queries: i.search(qs.reshape(-1, dim), k=1), args.repeats, device
            )
            rows.append(
                {
                    "bank_rows": bank_rows,
                    "dim": dim,
                    "precision": precision,
                    "per_image_ms_one_at_a_time": 1000 * statistics.median(one) / images,
                    "per_image_ms_batched": 1000 * statistics.median(batched) / images,
                }
            )
    return rows


def end_to_end(args, device, side, notes) -> list[dict]:
    rows = []
    label, backbone = next(iter(backbones(args.smoke, args.lite0_weights, notes).items()))
    batch = 2 if args.smoke else 64
    rng = np.random.default_rng(3)
    for share in (0.01, 0.1):
        bank_rows = max(64, int(share * (2_000 if args.smoke else BOTTLE_PATCHES)))
        extractor = TorchExtractor(backbone, str(device), "fp32" if device.type == "cpu" else "fp16")
        bank = torch.randn(bank_rows, extractor.dim)
        config = EngineConfig(geometry=InputGeometry(side, side), device=str(device), batch_size=batch)
        model = PatchCore(config, extractor, bank, torch.ones(2), {})
        images = list(rng.integers(0, 256, (batch, side, side, 3), np.uint8))
        one = timed(lambda m=model, imgs=images: [m.score([i]) for i in imgs], args.repeats, device)
        together = timed(lambda m=model, imgs=images: m.score(imgs), args.repeats, device)
        rows.append(
            {
                "backbone": label,
                "extractor": extractor.name,
                "bank_rows": bank_rows,
                "batch": batch,
                "images_per_s_one_per_call": batch / statistics.median(one),
                "images_per_s_batched": batch / statistics.median(together),
                "b1_p99_ms": 1000 * float(np.percentile(one, 99)) / batch,
            }
        )
    return rows


def table(title: str, rows: list[dict]) -> str:
    if not rows:
        return f"{title}: nothing measured"
    keys = list(rows[0])
    cells = [
        [f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys] for r in rows
    ]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [title, "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small inputs on the CPU (CI)")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", "out")), help="folder for the JSON"
    )
    parser.add_argument(
        "--lite0-weights", help="EfficientNet-Lite0 weights file, where its package is missing"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.smoke else 20)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    side = 64 if args.smoke else 224
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "extractor-cache"
    notes: list[str] = []
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "input_side": side,
        "smoke": args.smoke,
        "notes": notes,
    }
    started = time.perf_counter()
    for name, run in (
        ("extractor", lambda: extractor_speed(args, device, side, cache, notes)),
        ("parity", lambda: parity(args, device, side, notes)),
        ("search", lambda: search_speed(args, device)),
        ("end_to_end", lambda: end_to_end(args, device, side, notes)),
    ):
        try:
            report[name] = run()
        except Exception:  # a part that cannot run here is reported, the others still run
            notes.append(f"{name} failed:\n{traceback.format_exc(limit=3)}")
            report[name] = []
        print(table(name, report[name]), flush=True)
    report["seconds"] = time.perf_counter() - started
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))
    for note in notes:
        print("note:", note)
    print(
        f"device check on {report['device']} in {report['seconds']:.0f} s → {args.out / 'device_check.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
