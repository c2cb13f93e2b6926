"""What keeping verdicts for replay costs: the publisher's replay store (SQLite on the station's
disk) filled with an hour of a line at 10 parts/s (36,000 real verdict bodies), then replayed whole
from its first position, page by page, as a bridge that was down for that hour asks for it.

Prints per run: time to keep one verdict (the publisher does it before publishing), the file's
size and bytes per verdict, the publisher's memory growth, and the time to replay it all; then the
medians of the runs.

    python bench/bench_replay.py [--verdicts 36000] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from edge.pipeline.publisher import REPLAY_PAGE_BYTES
from edge.pipeline.replay import ReplayStore
from edge.protocol import Verdict, VerdictMessage, verdict_body


def verdict(seq: int) -> dict:
    message = VerdictMessage(
        "line1", "cam1", f"cam1-20261207T101500-{seq:08d}", Verdict.OK if seq % 9 else Verdict.NOK,
        "2026-12-07T10:15:00.123Z", 1_000_000 * seq, part_id=f"P{seq:010d}", score=0.731, threshold=1.0,
        bank_id="3f2a9c1e", bank_version="v0003", backend="openvino",
        latency_ms={"queue": 1.2, "inference": 21.4, "total": 24.9}, defect_area_px=0 if seq % 9 else 412,
        boxes=[] if seq % 9 else [[120, 88, 31, 17]], has_mask=True, epoch=1765100000000000, seq=seq,
    )  # fmt: skip
    return verdict_body(message)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(count: int, folder: Path) -> dict[str, float]:
    path = folder / f"replay-{time.monotonic_ns()}.sqlite"
    store = ReplayStore(path, keep_s=3600)
    bodies = [verdict(seq) for seq in range(1, count + 1)]
    before = rss_mb()
    started = time.perf_counter()
    for body in bodies:
        store.add("cam1", body["epoch"], body["seq"], body)
    keep_us = (time.perf_counter() - started) / count * 1e6
    grown = rss_mb() - before
    size = sum(p.stat().st_size for p in folder.glob(f"{path.name}*"))
    started = time.perf_counter()
    position, pages, replayed = (bodies[0]["epoch"], 0), 0, 0
    while True:
        page = store.page("cam1", *position, REPLAY_PAGE_BYTES)
        pages += 1
        replayed += len(page.verdicts)
        if not page.more:
            break
        position = (page.verdicts[-1]["epoch"], page.verdicts[-1]["seq"])
    replay_s = time.perf_counter() - started
    assert replayed == count, (replayed, count)
    store.close()
    return {"keep_us": keep_us, "file_mb": size / 1e6, "bytes_each": size / count, "rss_growth_mb": grown,
            "replay_s": replay_s, "pages": pages}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=36_000, help="default: an hour at 10 parts/s")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-replay-") as folder:
        results = [run(args.verdicts, Path(folder)) for _ in range(args.runs)]
    columns = list(results[0])
    print(f"{args.verdicts} verdicts, {args.runs} runs, page cap {REPLAY_PAGE_BYTES} bytes")
    print(" | ".join(f"{c:>13}" for c in ["run", *columns]))
    for number, result in enumerate(results, 1):
        print(" | ".join([f"{number:>13}", *(f"{result[c]:>13.2f}" for c in columns)]))
    medians = (f"{statistics.median(r[c] for r in results):>13.2f}" for c in columns)
    print(" | ".join(["       median", *medians]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
