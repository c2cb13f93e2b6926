"""edge-demo: the whole product on one machine, with no camera and no configuration.

Synthetic parts (good ones vary in position, rotation, lighting and noise; defective ones carry
scratches, spots or missing pieces) → a bank fitted on good parts with EfficientNet-Lite0 →
capture, worker and publisher as three processes joined by ZeroMQ sockets → verdicts shown live,
a summary, and mask overlays of the rejected parts written to a folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.files import write_bytes_atomic

log = logging.getLogger("edge.demo")
STATION, CAMERA = "demo", "cam0"
TRAIN_SEED, HOLDOUT_SEED, STREAM_SEED = 1, 2, 3
VERDICT_SILENCE_S = 30.0  # give up when the pipeline has answered nothing for this long
THRESHOLD_MARGIN = 1.05  # provisional rule until edge-calibrate (issue 4): largest held-out good score + 5 %


def publisher_process(endpoints: dict[str, str], stop: Any) -> None:
    from edge.pipeline.publisher import Publisher, PublisherSettings

    setup_logging()
    Publisher(
        PublisherSettings(
            STATION, endpoints["results"], endpoints["pub"], endpoints["latest"], heartbeat_s=0.5
        )
    ).run(stop)


def worker_process(
    bank_path: str, threshold: float, endpoints: dict[str, str], ready: Any, stop: Any
) -> None:
    from edge.engine.artifact import load_model
    from edge.pipeline.inspection import Bank
    from edge.pipeline.worker import Worker, WorkerSettings

    setup_logging()
    bank = Bank(load_model(bank_path), threshold, bank_id="demo", version="1")
    worker = Worker(bank, WorkerSettings(STATION, endpoints["frames"], endpoints["results"]))
    ready.set()
    worker.run(stop)


def _capture_process(
    count: int,
    size: int,
    defect_rate: float,
    rate_hz: float,
    endpoints: dict[str, str],
    ready: Any,
    stop: Any,
) -> None:
    from edge.pipeline.capture import Capture, CaptureSettings
    from edge.pipeline.sources import SyntheticSource

    setup_logging()
    source = SyntheticSource(size, defect_rate, count=count, seed=STREAM_SEED)
    settings = CaptureSettings(
        STATION, CAMERA, endpoints["frames"], trigger="triggered", expect_endpoint=endpoints["results"]
    )
    capture = Capture(source, settings)
    for event in ready:  # the subscriber listens and the worker has its bank: parts may come
        event.wait()
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    for _ in range(count):
        if stop.is_set():
            break
        capture.offer(source.read())
        time.sleep(period)
    capture.close()


def _fit_bank(work: Path, size: int, train: int, progress: bool) -> tuple[Path, float]:
    from tqdm import tqdm

    from edge.engine.artifact import save_model
    from edge.engine.config import EngineConfig, InputGeometry
    from edge.engine.model import PatchCore
    from edge.pipeline.sources import SyntheticSource

    good = SyntheticSource(size, defect_rate=0.0, seed=TRAIN_SEED)
    config = EngineConfig(geometry=InputGeometry.full_frame(224), coreset_fraction=0.1)
    images = [good.read() for _ in tqdm(range(train), desc="good parts", disable=not progress, leave=False)]
    model = PatchCore.fit(images, config)
    holdout = SyntheticSource(size, defect_rate=0.0, seed=HOLDOUT_SEED)
    scores = [r.score for r in model.score([holdout.read() for _ in range(max(8, train // 2))])]
    threshold = THRESHOLD_MARGIN * max(scores)
    log.info(
        "bank: %d x %d from %d good parts; threshold %.3f (largest of %d held-out good scores + 5%%)",
        *model.bank.shape,
        train,
        threshold,
        len(scores),
    )
    return save_model(model, work / "bank.edge"), threshold


def _overlay(frame: np.ndarray, mask_png: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
    overlay = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    overlay[mask] = (0.5 * overlay[mask] + (0, 0, 127)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (0, 0, 255), 1)
    return overlay


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="parts streamed (default 300)")
    parser.add_argument(
        "--defect-rate", type=float, default=0.2, help="share of defective parts (default 0.2)"
    )
    parser.add_argument("--train", type=int, default=40, help="good parts the bank is fitted on")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="parts per second on the line (default 10; 0: no pause)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for overlays and summary")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no per-part lines, no progress bars")
    return parser.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.frames < 1 or args.train < 2 or not 0.0 <= args.defect_rate <= 1.0 or args.size < 64:
        raise UsageError("need --frames >= 1, --train >= 2, --defect-rate in [0, 1] and --size >= 64")
    from edge.client import Subscriber
    from edge.pipeline.sources import SyntheticSource
    from edge.protocol import Verdict

    overlays = args.out / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        work = Path(tmp)
        bank_path, threshold = _fit_bank(work, args.size, args.train, not args.quiet)
        endpoints = {name: f"ipc://{work}/{name}" for name in ("frames", "results", "pub", "latest")}
        spawn = mp.get_context("spawn")
        stop, listening, worker_ready = spawn.Event(), spawn.Event(), spawn.Event()
        processes = [
            spawn.Process(target=publisher_process, args=(endpoints, stop), name="publisher"),
            spawn.Process(
                target=worker_process,
                args=(str(bank_path), threshold, endpoints, worker_ready, stop),
                name="worker",
            ),
            spawn.Process(
                target=_capture_process,
                name="capture",
                args=(
                    args.frames,
                    args.size,
                    args.defect_rate,
                    args.rate,
                    endpoints,
                    [listening, worker_ready],
                    stop,
                ),
            ),
        ]
        for process in processes:
            process.start()
        truth = SyntheticSource(args.size, args.defect_rate, count=args.frames, seed=STREAM_SEED)
        expected = [(truth.read(), truth.last.defect) for _ in range(args.frames)]
        verdicts: dict[int, Any] = {}
        latencies: list[float] = []
        try:
            with Subscriber(endpoints["pub"], STATION) as subscriber:
                if subscriber.receive(60) is None:
                    raise UsageError("the publisher did not start within 60 s")
                listening.set()
                started = last_verdict = time.monotonic()
                while len(verdicts) < args.frames:
                    event = subscriber.receive(1.0)
                    if time.monotonic() - last_verdict > VERDICT_SILENCE_S:  # heartbeats alone do not count
                        log.error(
                            "no verdict for %.0f s; %d of %d received",
                            VERDICT_SILENCE_S,
                            len(verdicts),
                            args.frames,
                        )
                        break
                    if event is None:
                        continue
                    if event.mask_png is not None and event.frame_id:
                        seq = int(event.frame_id.rsplit("-", 1)[1])
                        if seq in verdicts and verdicts[seq].verdict == Verdict.NOK:
                            cv2.imwrite(
                                str(overlays / f"part{seq:04d}.png"),
                                _overlay(expected[seq][0], event.mask_png),
                            )
                        continue
                    if event.verdict is None:
                        continue
                    verdict = event.verdict
                    seq = int(verdict.frame_id.rsplit("-", 1)[1])
                    verdicts[seq] = verdict
                    last_verdict = time.monotonic()
                    latencies.append((time.monotonic_ns() - verdict.capture_monotonic_ns) / 1e6)
                    if not args.quiet:
                        log.info(
                            "part %3d %-7s score %7.3f  truth %s",
                            seq,
                            verdict.verdict.value,
                            verdict.score or float("nan"),
                            expected[seq][1] or "good",
                        )
                elapsed = time.monotonic() - started
        finally:
            stop.set()
            for process in processes:
                process.join(timeout=20)
                if process.is_alive():
                    process.terminate()
    defective = [s for s, (_, d) in enumerate(expected) if d is not None and s in verdicts]
    good = [s for s, (_, d) in enumerate(expected) if d is None and s in verdicts]
    nok = sum(v.verdict == Verdict.NOK for v in verdicts.values())
    summary = {
        "frames_in": args.frames,
        "verdicts_out": len(verdicts),
        "ok": sum(v.verdict == Verdict.OK for v in verdicts.values()),
        "nok": nok,
        "errors": sum(v.verdict in (Verdict.ERROR, Verdict.TIMEOUT) for v in verdicts.values()),
        "detection_rate": sum(verdicts[s].verdict == Verdict.NOK for s in defective) / max(len(defective), 1),
        "false_reject_rate": sum(verdicts[s].verdict == Verdict.NOK for s in good) / max(len(good), 1),
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "frames_per_s": len(verdicts) / elapsed if verdicts else 0.0,
        "threshold": threshold,
        "overlays": str(overlays),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        write_bytes_atomic(args.json, json.dumps(summary, indent=2).encode())
    return 0 if summary["verdicts_out"] == args.frames else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
