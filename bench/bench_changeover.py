"""Changeover between parts: two recipes on one camera, the product alternating every part, against
one recipe; printed as a table.

    python bench/bench_changeover.py --parts 150 --rate 5

Two banks are fitted at the defaults (MVTec bottle and screw, $EDGE_DATA_ROOT/mvtec), each with a
threshold just above its own good test frames' scores. A worker holding both recipes and a
publisher run on real ZeroMQ sockets (ipc); frames are sent as a triggered capture sends them, at
`--rate` parts per second, each naming its product, and a subscriber collects the verdicts. A run
sends bottle and screw test frames in turn (a changeover every part); the baseline sends bottle
frames only, to a worker holding bottle alone. Latency: from the frame's capture stamp to the
verdict's arrival at the subscriber. Every part must get one verdict, judged by its own recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from edge.client import Subscriber
from edge.engine.config import EngineConfig
from edge.engine.model import PatchCore
from edge.eval.mvtec import load_category
from edge.imageio import read_image
from edge.memory import tune_allocator
from edge.pipeline.inspection import Bank, RecipeBook
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, Verdict, encode_frame

STATION = "line1"
DATA_ROOT = Path(os.environ.get("EDGE_DATA_ROOT", "/work/shared/data")) / "mvtec"


def recipe(name: str) -> tuple[Bank, list[tuple[np.ndarray, int]]]:
    category = load_category(DATA_ROOT, name)
    model = PatchCore.fit([read_image(p) for p in category.train], EngineConfig())
    test = [(read_image(s.path), s.label) for s in category.test]
    scores = model.score([image for image, _ in test])
    threshold = 1.02 * max(r.score for r, (_, label) in zip(scores, test, strict=True) if label == 0)
    print(f"{name}: bank of {model.bank.shape[0]} rows, threshold {threshold:.3f}", flush=True)
    return Bank(model, threshold, name, "v1", recipe=name), test


def run(book: RecipeBook, parts: list[tuple[str, np.ndarray, int]], rate: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="edge-changeover-"))
    endpoints = {name: f"ipc://{folder}/{name}" for name in ("frames", "results", "pub")}
    context = zmq.Context()
    publisher = Publisher(
        PublisherSettings(STATION, endpoints["results"], endpoints["pub"], heartbeat_s=0.2), context
    )
    worker = Worker(book, WorkerSettings(STATION, endpoints["frames"], endpoints["results"]), context)
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in (publisher, worker)]
    for thread in threads:
        thread.start()
    subscriber = Subscriber(endpoints["pub"], STATION, context=context)
    while (event := subscriber.receive(0.5)) is None or event.heartbeat is None:
        pass
    sender = context.socket(zmq.PUSH)
    sender.connect(endpoints["frames"])
    verdicts: dict[str, tuple[float, object]] = {}

    def collect() -> None:
        deadline = time.monotonic() + len(parts) / rate + 60
        while len(verdicts) < len(parts) and time.monotonic() < deadline:
            event = subscriber.receive(0.2)
            if event is not None and event.verdict is not None:
                verdicts[event.verdict.frame_id] = (time.monotonic_ns(), event.verdict)

    collecting = threading.Thread(target=collect)
    collecting.start()
    start = time.monotonic()
    for index, (product, image, _) in enumerate(parts):
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        header = FrameHeader(
            station=STATION, camera="cam0", seq=index, frame_id=f"part-{index}",
            capture_utc="2026-12-07T00:00:00Z", capture_monotonic_ns=time.monotonic_ns(),
            height=image.shape[0], width=image.shape[1], channels=1 if image.ndim == 2 else 3,
            trigger="triggered", part_id=f"P{index}", product=product if len(book.banks) > 1 else None,
        )  # fmt: skip
        sender.send_multipart(encode_frame(header, image))
    collecting.join()
    stop.set()
    for thread in threads:
        thread.join(10)
    sender.close()
    subscriber.socket.close()
    context.destroy(linger=0)
    latencies, wrong_recipe, wrong_verdict = [], 0, 0
    for index, (product, _, label) in enumerate(parts):
        arrived, verdict = verdicts.get(f"part-{index}", (None, None))
        if verdict is None:
            continue
        latencies.append((arrived - verdict.capture_monotonic_ns) / 1e6)
        wrong_recipe += verdict.recipe != product
        wrong_verdict += (verdict.verdict == Verdict.NOK) != bool(label)
    return {
        "parts": len(parts),
        "answered": len(verdicts),
        "wrong_recipe": wrong_recipe,
        "disagree": wrong_verdict,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=150)
    parser.add_argument("--rate", type=float, default=5.0, help="parts per second")
    args = parser.parse_args()
    tune_allocator()
    bottle, bottle_test = recipe("bottle")
    screw, screw_test = recipe("screw")
    single = [("bottle", *bottle_test[i % len(bottle_test)]) for i in range(args.parts)]
    tests = {"bottle": bottle_test, "screw": screw_test}
    alternating = [
        (product, *tests[product][(i // 2) % len(tests[product])])
        for i, product in enumerate(["bottle", "screw"] * (args.parts // 2))
    ]
    print(f"{args.parts} parts at {args.rate:g}/s; latency ms from capture to the subscriber")
    print(f"{'run':<34} {'answered':>9} {'wrong recipe':>13} {'verdict != label':>17} {'p50':>7} {'p99':>7}")
    for name, book, parts in (
        ("one recipe (bottle)", RecipeBook([bottle]), single),
        ("two recipes, changeover every part", RecipeBook([bottle, screw]), alternating),
    ):
        row = run(book, parts, args.rate)
        answered = f"{row['answered']}/{row['parts']}"
        print(f"{name:<34} {answered:>9} {row['wrong_recipe']:>13} {row['disagree']:>17} "
              f"{row['p50']:>7.1f} {row['p99']:>7.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
