"""edge's default beside anomalib exported to OpenVINO (what a user would deploy instead), on one
MVTec category, timed in one run, alternating, each side alone on the machine; printed as a table.

anomalib lives in its own environment (its pins are not edge's); this script runs in both. Once:

    python -m venv /tmp/anov && /tmp/anov/bin/pip install 'anomalib[openvino]==2.7.0' \\
        torch==2.14.1 torchvision==0.29.1 timm onnxscript
    /tmp/anov/bin/python bench/bench_anomalib.py fit bottle --out /tmp/anobench

then from edge's environment:

    python bench/bench_anomalib.py compare bottle --out /tmp/anobench --anomalib-python /tmp/anov/bin/python

`fit` fits anomalib's PatchCore (EfficientNet-Lite0, blocks 2 and 4, 1 % coreset) on the
category's good frames with edge's packaged Lite0 weights mapped into timm's model (no weights can
be downloaded here), tests it, and exports it the way anomalib's docs say (`Engine.export`,
ExportType.OPENVINO: pre-processing, network, bank and post-processing in one graph) for batch 1
at the frames' size. `compare` runs each side `--runs` times, alternating, 2 threads each: images/s
reading every test frame from disk (decode included) and the median batch-1 latency on decoded
frames, plus the image AUROC of the scores it timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

THREADS = 2
# edge's settings beside its default (--edge NAME ...): the measured levers
EDGE_VARIANTS = {
    "bf16": {"extractor_precision": "bf16"},
    "squash256": {"geometry": {"mode": "squash", "resize": 256}},  # anomalib's input
}
DATA_ROOT = Path(os.environ.get("EDGE_DATA_ROOT", "/work/shared/data"))
REPO = Path(__file__).resolve().parents[1]


def test_frames(category: str) -> tuple[list[Path], list[int]]:
    """The category's test frames in a fixed order, and their labels (1: defective)."""
    paths = sorted((DATA_ROOT / "mvtec" / category / "test").glob("*/*.png"))
    return paths, [int(p.parent.name != "good") for p in paths]


def lite0_into_timm(model) -> None:  # anomalib's Patchcore (anomalib is not edge's dependency)
    """Load edge's packaged EfficientNet-Lite0 weights into timm's tf_efficientnet_lite0 inside
    anomalib's feature extractor (the same network under timm's names)."""
    sys.path.insert(0, str(REPO))
    from edge.engine.backbones import build_lite_classifier

    ours, _ = build_lite_classifier()
    stages = [(s, i) for s, count in enumerate((1, 2, 2, 3, 3, 4, 1)) for i in range(count)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}  # fmt: skip
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    renamed = {}
    for key, value in ours.state_dict().items():
        head, _, rest = key.partition(".")
        if head != "_blocks":
            renamed[f"{top[head]}.{rest}"] = value
            continue
        number, _, rest = rest.partition(".")
        layer, _, leaf = rest.partition(".")
        stage, index = stages[int(number)]
        renamed[f"blocks.{stage}.{index}.{(first if stage == 0 else other)[layer]}.{leaf}"] = value
    extractor = model.model.feature_extractor.feature_extractor
    missing = extractor.load_state_dict(renamed, strict=False).missing_keys
    if missing:
        raise SystemExit(f"Lite0 weights did not map onto timm's model: {missing[:5]}")


def fit(category: str, out: Path) -> None:
    import torch
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    torch.set_num_threads(THREADS)
    model = Patchcore(backbone="tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"), pre_trained=False,
                      coreset_sampling_ratio=0.01)  # fmt: skip
    lite0_into_timm(model)
    data = MVTecAD(root=DATA_ROOT / "mvtec", category=category, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=out / "run", logger=False)
    started = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    print(f"anomalib fit {time.perf_counter() - started:.0f} s", flush=True)
    print(engine.test(model=model, datamodule=data))
    import cv2

    height, width = cv2.imread(str(test_frames(category)[0][0])).shape[:2]
    path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=out / category,
                         input_size=(height, width), onnx_kwargs={"dynamic_axes": {}})  # fmt: skip
    print("exported", path)


def timed(paths: list[Path], read: Callable, predict: Callable) -> dict:
    """Images/s reading each frame from disk, the median batch-1 ms on decoded frames, the scores."""
    for path in paths[:5]:
        predict(read(path))
    started = time.perf_counter()
    scores = [predict(read(path)) for path in paths]
    per_second = len(paths) / (time.perf_counter() - started)
    latencies = []
    for image in [read(path) for path in paths[:40]]:
        started = time.perf_counter()
        predict(image)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"images_s": per_second, "batch1_ms": statistics.median(latencies), "scores": scores}


def measure_anomalib(category: str, out: Path) -> dict:
    from anomalib.data.utils import read_image
    from anomalib.deploy import OpenVINOInferencer

    xml = out / category / "weights" / "openvino" / "model.xml"
    inferencer = OpenVINOInferencer(path=xml, device="CPU", config={"INFERENCE_NUM_THREADS": str(THREADS)})
    paths, _ = test_frames(category)
    return timed(
        paths,
        lambda path: read_image(path, as_tensor=True),
        lambda image: float(inferencer.predict(image).pred_score.reshape(-1)[0]),
    )


def measure_edge(category: str, settings: dict) -> dict:
    """edge fitted on the category's good frames with `settings` over the defaults, then timed."""
    import torch

    torch.set_num_threads(THREADS)
    from edge.engine.config import EngineConfig, InputGeometry
    from edge.engine.model import PatchCore
    from edge.eval.mvtec import load_category
    from edge.imageio import read_image

    if "geometry" in settings:
        settings = {**settings, "geometry": InputGeometry(**settings["geometry"])}
    train = load_category(DATA_ROOT / "mvtec", category).train
    model = PatchCore.fit((read_image(p) for p in train), EngineConfig(**settings))
    model.warm_up()
    paths, _ = test_frames(category)
    return timed(paths, read_image, lambda image: model.score([image])[0].score)


def worker(side: str, category: str, out: Path) -> None:
    """One side's run in this interpreter, printed as one JSON line (`side`: anomalib, or edge's
    settings as JSON)."""
    if side == "anomalib":
        print(json.dumps(measure_anomalib(category, out)))
    else:
        print(json.dumps(measure_edge(category, json.loads(side))))


def compare(args: argparse.Namespace) -> int:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from edge.eval.metrics import image_auroc

    _, labels = test_frames(args.category)
    sides = {"anomalib-OpenVINO": (args.anomalib_python, "anomalib"), "edge default": (sys.executable, "{}")}
    for variant in args.edge:
        sides[f"edge {variant}"] = (sys.executable, json.dumps(dict(EDGE_VARIANTS[variant])))
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for run in range(args.runs):
        for name, (python, side) in sides.items():
            command = [python, str(Path(__file__).resolve()), "worker", args.category, "--side", side]
            command += ["--out", str(args.out.resolve())]
            environment = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
            # cwd: anomalib's inferencer writes its compiled-model cache to ./openvino_cache
            done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=args.out)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            rate = runs[name][-1]["images_s"]
            print(f"run {run + 1}: {name} {rate:.1f} images/s", file=sys.stderr, flush=True)
    print(f"MVTec {args.category}, {len(labels)} test frames, {THREADS} threads, "
          f"{args.runs} alternating runs (median; range)")  # fmt: skip
    print(f"{'':<20} {'images/s (decode incl.)':>26} {'batch-1 ms':>20} {'image AUROC':>12}")
    for name, results in runs.items():
        rates = [r["images_s"] for r in results]
        latencies = [r["batch1_ms"] for r in results]
        auroc = image_auroc(np.array(labels), np.array(results[-1]["scores"]))
        print(f"{name:<20} {statistics.median(rates):>8.1f} ({min(rates):.1f}-{max(rates):.1f})"
              f"{'':>6} {statistics.median(latencies):>6.2f} ({min(latencies):.1f}-{max(latencies):.1f})"
              f" {auroc:>12.3f}")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("fit", "compare", "worker"))
    parser.add_argument("category", nargs="?", default="bottle")
    parser.add_argument("--out", type=Path, default=Path("/tmp/anobench"), help="anomalib's model, exported")
    parser.add_argument(
        "--anomalib-python", default="/tmp/anov/bin/python", help="an interpreter with anomalib"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--edge", nargs="*", default=[], choices=sorted(EDGE_VARIANTS), help="edge variants too"
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "fit":
        fit(args.category, args.out)
        return 0
    if args.step == "worker":
        worker(args.side, args.category, args.out)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
