"""Worker-pool benchmark: the broker's own ceiling and the latency it adds, with a no-op model.

    python bench/bench_broker.py                  # 64x64 frames: direct, broker with 1 and 2 workers, alone
    python bench/bench_broker.py --frames 20000 --rate 5000 --repeats 3

Real processes and sockets (ipc): a producer PUSHes free-run frames as a capture does, the real
Worker loop (inbox, micro-batches, reports, verdicts, masks) scores them with a model that does no
work, and a sink PULLs the results as the publisher does. "direct" is a single worker bound to the
frames endpoint; "broker Nw" puts edge's broker and N workers in between; "broker alone" replaces
the workers by a peer that answers each frame at once, so the broker's own ceiling shows. Per configuration:
the most frames/s it passes (producer as fast as it can), then latency from capture to result at a
paced rate (--rate); added latency = broker's minus direct's, measured in the same run. Medians over
--repeats runs. This machine has 2 cores for 3 to 5 processes, so the ceilings here are lower bounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import zmq

from edge.engine.config import InputGeometry
from edge.engine.geometry import Placement, place
from edge.engine.model import ImageResult
from edge.pipeline.broker import Broker, BrokerSettings
from edge.pipeline.inspection import Bank
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import (
    FRAME_TOPIC,
    FrameHeader,
    Verdict,
    WorkerReady,
    decode_result,
    encode_frame,
    encode_ready,
    encode_result,
    peek_frame,
    verdict_for,
)

STATION = "bench"
mp = mp.get_context("spawn")  # forked children would inherit torch's threads and ZeroMQ's context


class NoOpModel:
    """Scores nothing: every frame OK with a zero map, so only transport and bookkeeping are timed."""

    device = "cpu"

    def __init__(self) -> None:
        self.geometry = InputGeometry(resize=64, crop=None, mode="squash")

    def placement(self, frame_hw: tuple[int, int]) -> Placement:
        return place(frame_hw, self.geometry)

    def score(self, images: list[np.ndarray], timer: object = None) -> list[ImageResult]:
        results = []
        for image in images:
            placement = self.placement(image.shape[:2])
            amap = np.zeros(placement.input_hw, np.float32)
            results.append(ImageResult(0.0, 0.0, amap, placement))
        return results


def _worker(frames_endpoint: str, results_endpoint: str, pool_name: str | None, stop: mp.Event) -> None:
    bank = Bank(NoOpModel(), threshold=1.0, bank_id="bench", version="v0001", backend="noop")  # type: ignore[arg-type]
    settings = WorkerSettings(STATION, frames_endpoint, results_endpoint, max_batch=8, max_wait_ms=0.5,
                              pool_name=pool_name)  # fmt: skip
    Worker(bank, settings, zmq.Context()).run(stop)


def _echo_worker(workers_endpoint: str, results_endpoint: str, name: str, stop: mp.Event) -> None:
    """A pool peer that answers each frame at once (OK, no pixels looked at): the broker's own
    ceiling, with almost nothing else on the CPU."""
    context = zmq.Context()
    broker = context.socket(zmq.DEALER)
    broker.connect(workers_endpoint)
    results = context.socket(zmq.PUSH)
    results.connect(results_endpoint)
    received = received_bytes = 0

    def report() -> None:
        ready = WorkerReady(name, received, received, 64, received_bytes, 1 << 30, "bench", "v0001")
        broker.send_multipart(encode_ready(ready))

    report()
    last = time.monotonic()
    while not stop.is_set():
        if broker.poll(50):
            parts = broker.recv_multipart()
            if parts[0] == FRAME_TOPIC:
                header = peek_frame(parts)
                received += 1
                received_bytes += sum(len(part) for part in parts)
                results.send_multipart(encode_result(verdict_for(header, Verdict.OK), None))
                if received % 16 == 0:
                    report()
                    last = time.monotonic()
        if time.monotonic() - last > 0.05:
            report()
            last = time.monotonic()
    context.destroy(linger=0)


def _broker(frames_endpoint: str, workers_endpoint: str, stop: mp.Event) -> None:
    Broker(BrokerSettings(STATION, frames_endpoint, workers_endpoint), zmq.Context()).run(stop)


def _produce(endpoint: str, count: int, rate: float | None, size: int, done: mp.Event) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, -1)  # every frame is delivered, however long the workers take to start
    socket.connect(endpoint)
    pixels = np.random.default_rng(0).integers(0, 255, (size, size), np.uint8)
    started = time.perf_counter()
    for seq in range(count):
        if rate and (wait := started + seq / rate - time.perf_counter()) > 0:
            time.sleep(wait)  # not a busy wait: on 2 cores it would take one from the processes measured
        header = FrameHeader(STATION, "cam0", seq, f"f{seq}", "2026-01-01T00:00:00+00:00",
                             time.monotonic_ns(), size, size, 1)  # fmt: skip
        socket.send_multipart(encode_frame(header, pixels), copy=False)
    # a sender that disconnects while the receiver applies backpressure loses what is still in the
    # socket buffers (ZeroMQ drops a closed peer's unread bytes): stay until everything is answered
    done.wait(300)
    socket.close()
    context.term()


@dataclass
class Outcome:
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    received: int


def _measure(setup: str, workers: int, count: int, rate: float | None, size: int) -> Outcome:
    folder = tempfile.mkdtemp(prefix="edge-bench-broker-")
    frames, results, pool = (f"ipc://{folder}/{n}" for n in ("frames", "results", "workers"))
    context = zmq.Context()
    sink = context.socket(zmq.PULL)
    sink.bind(results)
    stop = mp.Event()
    children = []
    if setup == "direct":
        children.append(mp.Process(target=_worker, args=(frames, results, None, stop)))
    else:
        peer = _echo_worker if setup == "alone" else _worker
        children.append(mp.Process(target=_broker, args=(frames, pool, stop)))
        children += [mp.Process(target=peer, args=(pool, results, f"w{i}", stop)) for i in range(workers)]
    for child in children:
        child.start()
    warm_done, done = mp.Event(), mp.Event()
    warm = mp.Process(target=_produce, args=(frames, 200, None, size, warm_done))
    warm.start()
    for _ in range(200):  # the workers are up, warm, and connected
        if not sink.poll(120_000):
            raise RuntimeError(f"{setup}: no result within 120 s of starting")
        sink.recv_multipart()
    warm_done.set()
    warm.join()
    producer = mp.Process(target=_produce, args=(frames, count, rate, size, done))
    latencies, first = [], None
    producer.start()
    while len(latencies) < count and sink.poll(10_000):
        verdict, _ = decode_result(sink.recv_multipart())
        now = time.monotonic_ns()
        first = first or now
        latencies.append((now - verdict.capture_monotonic_ns) / 1e6)
    elapsed = (time.monotonic_ns() - first) / 1e9 if first else float("inf")
    done.set()
    producer.join()
    stop.set()
    for child in children:
        child.join(30)
    context.destroy(linger=0)
    return Outcome(len(latencies) / max(elapsed, 1e-9), float(np.percentile(latencies, 50)),
                   float(np.percentile(latencies, 99)), len(latencies))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames per run (default 20000)")
    parser.add_argument("--rate", type=float, default=2000, help="paced rate for latency, frames/s")
    parser.add_argument("--size", type=int, default=64, help="frame side, pixels (mono)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    setups = [("direct", 1), ("broker", 1), ("broker", 2), ("alone", 1)]
    print(f"{args.size}x{args.size} mono frames, {args.frames} per run, latency at {args.rate:.0f} frames/s, "
          f"median of {args.repeats} runs (each run's value in brackets)")  # fmt: skip
    print(f"{'setup':<12}{'max frames/s':>28}{'p50 ms':>22}{'p99 ms':>22}{'lost':>6}")
    rows = {}
    for setup, workers in setups:
        name = {"direct": "direct", "alone": "broker alone"}.get(setup, f"broker {workers}w")
        ceiling = [_measure(setup, workers, args.frames, None, args.size) for _ in range(args.repeats)]
        paced = [_measure(setup, workers, args.frames, args.rate, args.size) for _ in range(args.repeats)]
        rows[name] = paced
        lost = sum(args.frames - o.received for o in ceiling + paced)

        def cell(values: list[float], digits: int) -> str:
            runs = "/".join(f"{v:.{digits}f}" for v in values)
            return f"{statistics.median(values):.{digits}f} ({runs})"

        print(f"{name:<12}{cell([o.frames_per_s for o in ceiling], 0):>28}"
              f"{cell([o.p50_ms for o in paced], 2):>22}{cell([o.p99_ms for o in paced], 2):>22}{lost:>6}",
              flush=True)  # fmt: skip
    direct = rows["direct"]
    for name in ("broker 1w", "broker 2w", "broker alone"):
        added = [b.p99_ms - d.p99_ms for b, d in zip(rows[name], direct, strict=True)]
        print(f"added p99 latency, {name} vs direct: median {statistics.median(added):.2f} ms "
              f"({'/'.join(f'{a:.2f}' for a in added)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
