"""Soak: a station under edge-run at a steady trigger rate for many minutes. Reports each process's
resident memory growth after warm-up, and whether every part got exactly one verdict.

    python bench/bench_soak.py [--minutes 20] [--rate 5] [--warm-up 3] [--json out/soak.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
import zmq

from edge.bankstore import BankStore
from edge.calibration.procedure import calibrate
from edge.client import Subscriber, control_request
from edge.config import CalibrationConfig
from edge.demo import station_config
from edge.pipeline.sources import SyntheticSource
from edge.protocol import encode_trigger

SAMPLE_S = 10.0


def children(pid: int) -> dict[str, int]:
    """edge-run's child processes by role (publisher, worker, capture)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except FileNotFoundError:
            continue
        module = next((part for part in command if part.startswith("edge.services.")), "")
        found[module.removeprefix("edge.services.")] = int(child)
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=5.0, help="parts per second")
    parser.add_argument("--warm-up", type=float, default=3.0, help="minutes before memory is the baseline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        work = Path(tmp)
        good = SyntheticSource(256, 0.0, seed=1)
        calibrate(
            BankStore(work / "banks"),
            [good.read() for _ in range(40)],
            CalibrationConfig(coreset_fraction=0.1, full_frame=True),
        )
        raw = station_config(work, 256, 0.2)
        config = work / "station.yaml"
        config.write_text(yaml.safe_dump(raw))
        station = subprocess.Popen([sys.executable, "-m", "edge.services.supervisor", str(config)])
        context = zmq.Context()
        trigger = context.socket(zmq.PUSH)
        trigger.connect(raw["cameras"][0]["trigger_endpoint"])
        verdicts: Counter = Counter()
        outcomes: Counter = Counter()
        latencies: list[float] = []
        samples: list[tuple[float, dict[str, float]]] = []
        with Subscriber(
            raw["endpoints"]["publish"], raw["station"], topics=("verdict",), context=context
        ) as sub:
            while control_request(raw["endpoints"]["control"], "status", 1.0) is None:
                pass
            time.sleep(1.0)
            pids = children(station.pid)
            started = time.monotonic()
            end = started + 60 * args.minutes
            sent, next_sample = 0, started
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - started, {role: rss_mb(pid) for role, pid in pids.items()}))
                    next_sample += SAMPLE_S
                if now >= started + sent / args.rate:
                    trigger.send_multipart(encode_trigger(f"p{sent}"))
                    sent += 1
                    continue
                event = sub.receive(min(0.05, max(started + sent / args.rate - now, 0.001)))
                if event is not None and event.verdict is not None:
                    verdicts[event.verdict.part_id] += 1
                    outcomes[event.verdict.verdict.value] += 1
                    latencies.append((time.monotonic_ns() - event.verdict.capture_monotonic_ns) / 1e6)
            quiet_until = time.monotonic() + 15
            while time.monotonic() < quiet_until and len(verdicts) < sent:
                event = sub.receive(0.5)
                if event is not None and event.verdict is not None:
                    verdicts[event.verdict.part_id] += 1
                    outcomes[event.verdict.verdict.value] += 1
            restarted = children(station.pid) != pids
        station.send_signal(signal.SIGTERM)
        station.wait(60)
        trigger.close()
        context.destroy(linger=0)

    warm = [rss for t, rss in samples if t >= 60 * args.warm_up]
    rows = {}
    for role in pids:
        baseline = warm[0][role]
        last_minute = [rss[role] for t, rss in samples if t >= samples[-1][0] - 60]
        rows[role] = {
            "rss_mb_after_warm_up": baseline,
            "rss_mb_end": statistics.mean(last_minute),
            "rss_mb_max": max(rss[role] for _, rss in samples),
            "growth_pct": 100 * (statistics.mean(last_minute) - baseline) / baseline,
        }
    lost = sent - len(verdicts)
    summary = {
        "minutes": args.minutes,
        "rate_hz": args.rate,
        "parts": sent,
        "verdicts": sum(verdicts.values()),
        "lost": lost,
        "answered_twice": sum(1 for c in verdicts.values() if c > 1),
        "outcomes": dict(outcomes),
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": float(np.percentile(latencies, 99)),
        "processes_restarted": restarted,
        "memory": rows,
    }
    print(f"{'process':<12}{'RSS after warm-up MB':>22}{'RSS end MB':>12}{'max MB':>10}{'growth %':>10}")
    for role, row in rows.items():
        print(
            f"{role:<12}{row['rss_mb_after_warm_up']:>22.1f}{row['rss_mb_end']:>12.1f}"
            f"{row['rss_mb_max']:>10.1f}{row['growth_pct']:>10.2f}"
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "memory"}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if lost == 0 and summary["answered_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
