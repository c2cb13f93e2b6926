"""Pipeline benchmark: the same frames through edge-worker and edge-publisher processes (as a station
runs them, from a station configuration) against the engine scoring them in-process. Prints frames
per second and latency for both, the throughput ratio, and the latency the pipeline adds.

    python bench/bench_pipeline.py [--frames 300] [--coreset 0.01] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zmq

from edge.bankstore import BankStore
from edge.client import Subscriber, control_request
from edge.engine.config import EngineConfig
from edge.engine.model import PatchCore
from edge.memory import tune_allocator
from edge.pipeline.sources import SyntheticSource
from edge.protocol import FrameHeader, encode_frame

STATION = "bench"


def frames_of(count: int, seed: int, defect_rate: float) -> list[np.ndarray]:
    source = SyntheticSource(256, defect_rate, seed=seed)
    return [source.read() for _ in range(count)]


def in_process(model: PatchCore, frames: list[np.ndarray], batch: int) -> tuple[float, list[float]]:
    """Frames per second and per-batch milliseconds of model.score on batches of `batch`."""
    model.score(frames[:batch])  # warm-up
    started = time.perf_counter()
    batch_ms = []
    for start in range(0, len(frames), batch):
        t0 = time.perf_counter()
        model.score(frames[start : start + batch])
        batch_ms.append((time.perf_counter() - t0) * 1000)
    return len(frames) / (time.perf_counter() - started), batch_ms


def station(work: Path, batch: int) -> Path:
    endpoints = {name: f"ipc://{work}/{name}" for name in ("frames", "results", "pub", "control")}
    config = {
        "station": STATION,
        "bank": {"path": str(work / "banks"), "threshold": 1e9},
        "endpoints": {
            **{k: endpoints[k] for k in ("frames", "results", "control")},
            "publish": endpoints["pub"],
        },
        "cameras": [{"name": "bench", "source": {"kind": "synthetic"}}],  # not started: the bench sends
        "worker": {"max_batch": batch, "max_wait_ms": 5},
    }
    path = work / "station.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


WORKER_MS: list[float] = []  # the worker's own time per frame (its verdicts' latency_ms["total"])


def _receive(subscriber: Subscriber, timeout_s: float, latencies: list[float]) -> bool:
    """Take one event (False after `timeout_s` without one); a verdict's latency since capture is kept."""
    event = subscriber.receive(timeout_s)
    if event is None:
        return False
    if event.verdict is not None:
        latencies.append((time.monotonic_ns() - event.verdict.capture_monotonic_ns) / 1e6)
        WORKER_MS.append(event.verdict.latency_ms.get("total", float("nan")))
    return True


def _collect(subscriber: Subscriber, count: int) -> tuple[int, list[float]]:
    """Verdicts received (until `count` or 30 s of silence) and their latencies since capture."""
    latencies: list[float] = []
    while len(latencies) < count and _receive(subscriber, 30, latencies):
        pass
    return len(latencies), latencies


def _paced(
    subscriber: Subscriber, sender: zmq.Socket, frames: list[np.ndarray], fps: float
) -> tuple[int, list[float]]:
    """Send at `fps` while receiving in between, so a verdict's latency is not its wait to be read."""
    latencies: list[float] = []
    started = time.monotonic()
    for seq, image in enumerate(frames):
        while (wait := started + seq / fps - time.monotonic()) > 0:
            _receive(subscriber, wait, latencies)
        sender.send_multipart(_frame(image, seq, "paced"), copy=False)
    while len(latencies) < len(frames) and _receive(subscriber, 30, latencies):
        pass
    return len(latencies), latencies


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _frame(image: np.ndarray, seq: int, prefix: str) -> list:
    header = FrameHeader(
        station=STATION,
        camera="bench",
        seq=seq,
        frame_id=f"{prefix}-{seq}",
        capture_utc="-",
        capture_monotonic_ns=time.monotonic_ns(),
        height=image.shape[0],
        width=image.shape[1],
        channels=3,
    )
    return encode_frame(header, image)


def through_pipeline(work: Path, frames: list[np.ndarray], batch: int, paced_fps: float) -> dict:
    config = station(work, batch)
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    processes = [
        subprocess.Popen([sys.executable, "-m", f"edge.services.{name}", str(config)], env=env)
        for name in ("publisher", "worker")
    ]
    context = zmq.Context()
    sender = context.socket(zmq.PUSH)
    sender.connect(f"ipc://{work}/frames")
    try:
        with Subscriber(
            f"ipc://{work}/pub", STATION, topics=("verdict", "heartbeat"), context=context
        ) as sub:
            sub.receive(60)
            deadline = time.monotonic() + 120
            while control_request(f"ipc://{work}/control", "status", 1.0) is None:
                assert time.monotonic() < deadline, "the worker did not start"
            for seq, image in enumerate(frames[:batch]):  # warm-up through the pipeline, not timed
                sender.send_multipart(_frame(image, seq, "warm"))
            _collect(sub, batch)
            WORKER_MS.clear()
            before = {
                name: _cpu_seconds(p.pid) for name, p in zip(("publisher", "worker"), processes, strict=True)
            }
            started = time.perf_counter()
            for seq, image in enumerate(frames):
                sender.send_multipart(_frame(image, seq, "bench"), copy=False)
            received, latencies = _collect(sub, len(frames))
            fps = received / (time.perf_counter() - started)
            worker_ms = statistics.median(WORKER_MS)
            cpu_s = {
                name: _cpu_seconds(p.pid) - before[name]
                for name, p in zip(("publisher", "worker"), processes, strict=True)
            }
            paced_received, paced = _paced(sub, sender, frames, paced_fps)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        sender.close()
        context.destroy(linger=0)
    return {
        "fps": fps,
        "received": received,
        "latencies": latencies,
        "paced": paced,
        "paced_received": paced_received,
        "cpu_s": cpu_s,
        "worker_total_ms": worker_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--coreset", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=8, help="in-process batch = the worker's max batch")
    parser.add_argument(
        "--paced", type=float, default=0.6, help="paced run at this share of the in-process rate"
    )
    args = parser.parse_args()
    tune_allocator()  # as every edge command does at start-up (edge.cli_support.setup_logging)

    model = PatchCore.fit(frames_of(40, 1, 0.0), EngineConfig(coreset_fraction=args.coreset))
    frames = frames_of(args.frames, 3, 0.2)
    fps, batch_ms = in_process(model, frames, args.batch)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        BankStore(Path(tmp) / "banks").publish(model)
        result = through_pipeline(Path(tmp), frames, args.batch, args.paced * fps)
    fps_after, _ = in_process(model, frames, args.batch)  # the machine's speed may drift: measure again

    per_frame_ms = statistics.median(batch_ms) / args.batch
    reference = (fps + fps_after) / 2
    rows = [
        ("engine in-process, before", fps, batch_ms, "per batch"),
        ("engine in-process, after", fps_after, None, ""),
        ("worker+publisher processes", result["fps"], result["latencies"], "all frames queued at once"),
        (f"paced at {args.paced:.0%} of in-process", args.paced * fps, result["paced"], "since capture"),
    ]
    print(f"frames: {len(frames)} synthetic 256x256 parts, coreset {args.coreset:.0%}, batch {args.batch}")
    print(f"{'path':<36}{'frames/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, rate, times, note in rows:
        spread = (
            f"{statistics.median(times):>10.1f}{np.percentile(times, 99):>10.1f}  ({note})" if times else ""
        )
        print(f"{name:<36}{rate:>10.1f}{spread}")
    print(
        f"during the unpaced run: worker {result['cpu_s']['worker']:.1f} CPU s, publisher "
        f"{result['cpu_s']['publisher']:.1f} CPU s; the worker's own time per frame (median) "
        f"{result['worker_total_ms']:.1f} ms vs {per_frame_ms:.1f} ms in-process"
    )
    paced = result["paced"]
    print(
        f"pipeline / in-process throughput: {result['fps'] / reference:.2f} (target >= 0.95; in-process = "
        f"mean of before and after); verdicts {result['received']}/{len(frames)}, paced "
        f"{result['paced_received']}/{len(frames)}; added latency (paced minus in-process time per frame "
        f"{per_frame_ms:.1f} ms): p50 {statistics.median(paced) - per_frame_ms:.1f} ms, "
        f"p99 {np.percentile(paced, 99) - per_frame_ms:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
