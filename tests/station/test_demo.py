"""The README's main job: edge-demo over three real processes and real sockets."""

import json
import subprocess
import sys


def test_demo_gives_every_part_a_verdict_and_finds_the_defects(tmp_path):
    summary_path = tmp_path / "demo.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.demo",
            "--frames",
            "40",
            "--train",
            "16",
            "--rate",
            "20",
            "--defect-rate",
            "0.3",
            "--out",
            str(tmp_path / "demo"),
            "--json",
            str(summary_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["frames_in"] == summary["verdicts_out"] == 40
    assert summary["ok"] + summary["nok"] == 40 and summary["errors"] == 0
    assert summary["detection_rate"] >= 0.8
    assert summary["false_reject_rate"] <= 0.2
    assert summary["latency_p50_ms"] > 0
    assert len(list((tmp_path / "demo" / "overlays").glob("*.png"))) == summary["nok"]


def test_demo_refuses_bad_options_without_traceback():
    run = subprocess.run(
        [sys.executable, "-m", "edge.demo", "--frames", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "need --frames" in run.stderr and "Traceback" not in run.stderr
