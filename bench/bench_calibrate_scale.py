"""edge-calibrate's peak memory and time as the good frames grow: `edge-calibrate --from-folder`
on the first N frames of a large calibration set (bench/calibration_set.py), printed as a table
with the frames that screening kept (near-duplicates are not fitted on).

    python bench/calibration_set.py --out /tmp/edge-calib --frames 2000
    python bench/bench_calibrate_scale.py /tmp/edge-calib --frames 250 500 --fit-chunk-rows 0 262144

Each calibration is a process of its own (`python -m edge.calibration.cli`, so `--pythonpath`
can run another checkout's code beside this one's) in a fresh store; its peak resident memory is
that process's maximum RSS as the kernel reports it to `wait4`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def calibrate_once(
    root: Path, frames: int, chunk_rows: int, pythonpath: str | None
) -> tuple[float, float, int]:
    """(peak RSS MB, seconds, frames kept by screening) of one edge-calibrate run in a fresh
    process and a fresh store."""
    folder = Path(tempfile.mkdtemp(prefix="edge-frames-"))
    store = Path(tempfile.mkdtemp(prefix="edge-store-"))
    try:
        for path in sorted((root / "train" / "good").glob("*.png"))[:frames]:
            (folder / path.name).symlink_to(path)
        command = [sys.executable, "-m", "edge.calibration.cli", "--from-folder", str(folder)]
        command += [
            "--out",
            str(store),
            "--frames",
            str(frames),
            "--fit-chunk-rows",
            str(chunk_rows),
            "--quiet",
            "--json",
            str(store / "report.json"),
        ]
        environment = dict(os.environ)
        if pythonpath:
            environment["PYTHONPATH"] = pythonpath
        started = time.perf_counter()
        # cwd: not this checkout, which `python -m` would put before PYTHONPATH
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment, cwd=folder
        )
        assert child.stderr is not None
        errors = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"edge-calibrate failed ({child.returncode}): {errors.decode()[-1500:]}")
        kept = json.loads((store / "report.json").read_text())["frames"]
        return usage.ru_maxrss / 1024, seconds, kept
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a set bench/calibration_set.py wrote")
    parser.add_argument("--frames", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--fit-chunk-rows", type=int, nargs="+", default=[0, 262144])
    parser.add_argument("--pythonpath", help="run this checkout's edge instead (PYTHONPATH)")
    args = parser.parse_args()
    print(f"{'frames':>7} {'kept':>6} {'fit_chunk_rows':>15} {'peak MB':>9} {'seconds':>9}")
    for frames in args.frames:
        for chunk_rows in args.fit_chunk_rows:
            peak, seconds, kept = calibrate_once(args.root, frames, chunk_rows, args.pythonpath)
            print(f"{frames:>7} {kept:>6} {chunk_rows:>15} {peak:>9.0f} {seconds:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
