"""edge-demo: the whole product on one machine, with no camera and no configuration.

Synthetic parts (good ones vary in position, rotation, lighting and noise; defective ones carry
scratches, spots or missing pieces) → edge-calibrate's procedure on good parts only (bank and
threshold, EfficientNet-Lite0) → a station as edge-run runs it (publisher, worker and a triggered
capture as separate processes joined by ZeroMQ) → one software trigger per part, verdicts shown
live, a summary, and mask overlays of the rejected parts written to a folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.files import write_bytes_atomic

log = logging.getLogger("edge.demo")
STATION, CAMERA = "demo", "cam0"
TRAIN_SEED, STREAM_SEED = 1, 3
VERDICT_SILENCE_S = 30.0  # give up when the station has answered nothing for this long
DEADLINE_MS = 5000.0


def _calibrate(store_root: Path, size: int, train: int, quiet: bool) -> dict[str, Any]:
    """A bank and its threshold from good synthetic parts, as edge-calibrate makes them."""
    from tqdm import tqdm

    from edge.bankstore import BankStore
    from edge.calibration.procedure import calibrate
    from edge.config import CalibrationConfig
    from edge.pipeline.sources import SyntheticSource

    good = SyntheticSource(size, defect_rate=0.0, seed=TRAIN_SEED)
    frames = [good.read() for _ in tqdm(range(train), desc="good parts", disable=quiet, leave=False)]
    recipe = CalibrationConfig(frames=train, coreset_fraction=0.1, full_frame=True, target_frr=0.01)
    result = calibrate(BankStore(store_root), frames, recipe)
    log.info(
        "bank %s: threshold %.3f from %d held-out good parts (%s)",
        result.version,
        result.record["threshold"],
        result.record["choice"]["held_out"],
        result.record["choice"]["method"],
    )
    return result.record


def station_config(work: Path, size: int, defect_rate: float) -> dict[str, Any]:
    """The demo station: one triggered synthetic camera; every endpoint a socket file in `work`."""
    ipc = {
        name: f"ipc://{work}/{name}" for name in ("frames", "results", "pub", "latest", "control", "trigger")
    }
    return {
        "station": STATION,
        "bank": {"path": str(work / "banks")},
        "endpoints": {
            "frames": ipc["frames"],
            "results": ipc["results"],
            "publish": ipc["pub"],
            "latest": ipc["latest"],
            "control": ipc["control"],
        },
        "cameras": [
            {
                "name": CAMERA,
                "source": {
                    "kind": "synthetic",
                    "size": size,
                    "defect_rate": defect_rate,
                    "seed": STREAM_SEED,
                },
                "trigger": "triggered",
                "trigger_endpoint": ipc["trigger"],
                "deadline_ms": DEADLINE_MS,
            }
        ],
        "publisher": {"heartbeat_s": 0.5},
    }


def _overlay(frame: np.ndarray, mask_png: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
    overlay = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    overlay[mask] = (0.5 * overlay[mask] + (0, 0, 127)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (0, 0, 255), 1)
    return overlay


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="edge-demo",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 every part got its verdict; 1 some did not; 2 bad options",
    )
    parser.add_argument("--frames", type=int, default=300, help="parts streamed (default 300)")
    parser.add_argument(
        "--defect-rate", type=float, default=0.2, help="share of defective parts (default 0.2)"
    )
    parser.add_argument("--train", type=int, default=40, help="good parts the bank is calibrated on")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="parts per second on the line (default 10; 0: no pause)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for overlays and summary")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no per-part lines, no progress bars")
    return parser.parse_args(argv)


class _Line:
    """The demo's PLC and MES in one: triggers parts at the line rate and records the verdicts."""

    def __init__(self, endpoints: dict[str, str], parts: list[tuple[np.ndarray, str | None]], quiet: bool):
        import zmq

        from edge.client import Subscriber
        from edge.protocol import encode_trigger
        from edge.sockets import open_socket

        self.encode_trigger = encode_trigger

        self.context = zmq.Context()
        self.trigger = open_socket(
            self.context, zmq.PUSH, endpoints["trigger"], bind=False, max_message_bytes=None, linger_ms=1000
        )
        self.subscriber = Subscriber(endpoints["publish"], STATION, context=self.context)
        self.parts, self.quiet = parts, quiet
        self.verdicts: dict[int, Any] = {}
        self.masks: dict[int, bytes] = {}
        self.part_of_frame: dict[str, int] = {}
        self.latencies: list[float] = []

    def _record(self, event: Any) -> None:
        if event.mask_png is not None and event.frame_id in self.part_of_frame:
            self.masks[self.part_of_frame[event.frame_id]] = event.mask_png
        if event.verdict is None or event.verdict.part_id is None:
            return
        verdict = event.verdict
        index = int(verdict.part_id.removeprefix("part"))
        self.verdicts[index] = verdict
        self.part_of_frame[verdict.frame_id] = index
        self.latencies.append((time.monotonic_ns() - verdict.capture_monotonic_ns) / 1e6)
        if not self.quiet:
            log.info(
                "part %3d %-7s score %7.3f  truth %s",
                index,
                verdict.verdict.value,
                verdict.score or float("nan"),
                self.parts[index][1] or "good",
            )

    def run(self, rate_hz: float) -> float:
        """Trigger every part, collect until each has its verdict (or silence); seconds taken."""
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        started = last_verdict = time.monotonic()
        sent = 0
        while len(self.verdicts) < len(self.parts):
            now = time.monotonic()
            if sent < len(self.parts) and now >= started + sent * period:
                self.trigger.send_multipart(self.encode_trigger(f"part{sent:04d}"))
                sent += 1
                continue
            before = len(self.verdicts)
            event = self.subscriber.receive(min(period, 0.2) if sent < len(self.parts) else 0.2)
            if event is not None:
                self._record(event)
            if len(self.verdicts) > before:
                last_verdict = time.monotonic()
            elif time.monotonic() - last_verdict > VERDICT_SILENCE_S:
                log.error(
                    "no verdict for %.0f s; %d of %d received",
                    VERDICT_SILENCE_S,
                    len(self.verdicts),
                    len(self.parts),
                )
                break
        self.subscriber.receive(0.3)  # the last mask follows its verdict
        return time.monotonic() - started

    def close(self) -> None:
        self.subscriber.socket.close()
        self.trigger.close()
        self.context.destroy(linger=0)


def _summary(line: _Line, parts: list, elapsed: float, threshold: float, overlays: Path) -> dict[str, Any]:
    from edge.protocol import Verdict

    verdicts = line.verdicts
    defective = [i for i, (_, d) in enumerate(parts) if d is not None and i in verdicts]
    good = [i for i, (_, d) in enumerate(parts) if d is None and i in verdicts]
    return {
        "frames_in": len(parts),
        "verdicts_out": len(verdicts),
        "ok": sum(v.verdict == Verdict.OK for v in verdicts.values()),
        "nok": sum(v.verdict == Verdict.NOK for v in verdicts.values()),
        "errors": sum(v.verdict in (Verdict.ERROR, Verdict.TIMEOUT) for v in verdicts.values()),
        "detection_rate": sum(verdicts[i].verdict == Verdict.NOK for i in defective) / max(len(defective), 1),
        "false_reject_rate": sum(verdicts[i].verdict == Verdict.NOK for i in good) / max(len(good), 1),
        "latency_p50_ms": statistics.median(line.latencies) if line.latencies else None,
        "latency_p99_ms": float(np.percentile(line.latencies, 99)) if line.latencies else None,
        "frames_per_s": len(verdicts) / elapsed if verdicts else 0.0,
        "threshold": threshold,
        "overlays": str(overlays),
    }


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.frames < 1 or args.train < 2 or not 0.0 <= args.defect_rate <= 1.0 or args.size < 64:
        raise UsageError("need --frames >= 1, --train >= 2, --defect-rate in [0, 1] and --size >= 64")
    from edge.client import control_request
    from edge.config import load_config
    from edge.pipeline.sources import SyntheticSource
    from edge.protocol import Verdict
    from edge.services.supervisor import Supervisor

    overlays = args.out / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    truth = SyntheticSource(args.size, args.defect_rate, count=args.frames, seed=STREAM_SEED)
    parts = [(truth.read(), truth.last.defect) for _ in range(args.frames)]  # what capture will see
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        work = Path(tmp)
        record = _calibrate(work / "banks", args.size, args.train, args.quiet)
        raw = station_config(work, args.size, args.defect_rate)
        config_path = work / "station.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        stop = threading.Event()
        supervisor = Supervisor(config_path, load_config(config_path))
        running = threading.Thread(target=supervisor.run, args=(stop,), name="edge-run")
        running.start()
        line = _Line(
            {**raw["endpoints"], "trigger": raw["cameras"][0]["trigger_endpoint"]}, parts, args.quiet
        )
        try:
            if line.subscriber.receive(60) is None:
                raise UsageError("the publisher did not start within 60 s")
            deadline = time.monotonic() + 120
            while control_request(raw["endpoints"]["control"], "status", 1.0) is None:
                if time.monotonic() > deadline or not running.is_alive():
                    raise UsageError("the worker did not start within 120 s")
            elapsed = line.run(args.rate)
        finally:
            stop.set()
            running.join()
            line.close()
    for index, mask in line.masks.items():
        if index in line.verdicts and line.verdicts[index].verdict == Verdict.NOK:
            cv2.imwrite(str(overlays / f"part{index:04d}.png"), _overlay(parts[index][0], mask))
    summary = _summary(line, parts, elapsed, record["threshold"], overlays)
    print(json.dumps(summary, indent=2))
    if args.json:
        write_bytes_atomic(args.json, json.dumps(summary, indent=2).encode())
    return 0 if summary["verdicts_out"] == args.frames else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
