"""What a line's costs do as its good frames grow: fit peak memory and time, bank rows, and the
scoring speed the bank then gives, for fits on the first N frames of a large calibration set
(bench/calibration_set.py), at the defaults (no flags), printed as a table.

    python bench/calibration_set.py --out /tmp/edge-calib --frames 2000
    python bench/bench_fit_scale.py /tmp/edge-calib --frames 250 1000 2000
    python bench/bench_fit_scale.py /tmp/edge-calib --frames 250 1000 2000 5000 --fit-chunk-rows 262144

Each fit runs in a process of its own, so its peak resident memory (VmHWM, the whole process: torch
and the extractor included) is its own. Scoring: images/s over the set's test frames, read from
disk and decoded; batch-1 latency, the median of `model.score([image])` on decoded frames; search,
the search stage's milliseconds per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT_FRAMES = 60  # test frames scored per fit


def run_one(root: Path, frames: int, chunk_rows: int) -> dict:
    """In this process: fit on the first `frames` good frames, then score the test frames."""
    from edge.engine.config import EngineConfig
    from edge.engine.model import PatchCore, StageTimer
    from edge.imageio import read_image
    from edge.memory import peak_rss_mb, tune_allocator

    tune_allocator()
    paths = sorted((root / "train" / "good").glob("*.png"))[:frames]
    started = time.perf_counter()
    model = PatchCore.fit((read_image(p) for p in paths), EngineConfig(fit_chunk_rows=chunk_rows))
    fit_s = time.perf_counter() - started
    fit_peak = peak_rss_mb()
    tests = sorted((root / "test" / "good").glob("*.png"))[:LIMIT_FRAMES]
    started = time.perf_counter()
    for path in tests:
        model.score([read_image(path)])
    images_s = len(tests) / (time.perf_counter() - started)
    decoded = [read_image(p) for p in tests[:20]]
    latencies, timer = [], StageTimer()
    for image in decoded:
        begun = time.perf_counter()
        model.score([image], timer)
        latencies.append((time.perf_counter() - begun) * 1000)
    return {
        "chunk_rows": chunk_rows,
        "frames": frames,
        "patches": model.info["total_patches"],
        "bank_rows": int(model.bank.shape[0]),
        "reductions": model.info.get("bank_reductions", 0),
        "fit_s": fit_s,
        "fit_peak_mb": fit_peak,
        "images_s": images_s,
        "batch1_ms": statistics.median(latencies),
        "search_ms": timer.seconds["search"] * 1000 / len(decoded),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a set bench/calibration_set.py wrote")
    parser.add_argument("--frames", type=int, nargs="+", default=[250, 1000, 2000])
    parser.add_argument("--fit-chunk-rows", type=int, default=0, help="the fit's chunk (default 0: none)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child's run
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.root, args.one, args.fit_chunk_rows)))
        return 0
    rows = []
    for frames in args.frames:
        command = [sys.executable, __file__, str(args.root), "--one", str(frames)]
        child = subprocess.run([*command, "--fit-chunk-rows", str(args.fit_chunk_rows)],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if child.returncode != 0:
            print(child.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    columns = ("chunk_rows", "frames", "patches", "bank_rows", "reductions", "fit_s", "fit_peak_mb")
    columns += ("images_s", "batch1_ms", "search_ms")
    print(" ".join(f"{name:>11}" for name in columns))
    for row in rows:
        print(" ".join(f"{row[name]:>11.1f}" if isinstance(row[name], float) else f"{row[name]:>11}"
                       for name in columns))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
