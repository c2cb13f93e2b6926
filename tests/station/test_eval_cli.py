import json
import subprocess
import sys

import pytest

from edge.eval.cli import main

REQUIRED_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "pro",
    "fit_s",
    "extract_s",
    "coreset_s",
    "images_per_s",
    "latency_ms_b1",
    "peak_rss_mb",
    "bank_rows",
    "bank_dim",
}


def test_eval_writes_json_with_every_figure(synthetic_root, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [str(synthetic_root), "--categories", "part", "--coreset", "0.1", "--json", str(out), "--quiet"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    figures = report["categories"]["part"]
    assert set(figures) >= REQUIRED_KEYS
    assert figures["image_auroc"] >= 0.9 and figures["pixel_auroc"] >= 0.9
    assert 0.0 <= figures["pro"] <= 1.0
    assert figures["bank_dim"] == 472
    assert "part" in capsys.readouterr().out


def test_full_frame_option(synthetic_root, tmp_path):
    out = tmp_path / "full.json"
    assert (
        main(
            [
                str(synthetic_root),
                "--full-frame",
                "--crop",
                "160",
                "--coreset",
                "0.1",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["config"]["geometry"]["crop"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/folder"], "is not a folder"),
        (["{root}", "--categories", "nothing"], "is missing"),
        (["{root}", "--coreset", "1.5"], "coreset fraction"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(synthetic_root, args, message):
    args = [a.format(root=synthetic_root) for a in args]
    run = subprocess.run(
        [sys.executable, "-m", "edge.eval.cli", *args, "--quiet"], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_help():
    run = subprocess.run([sys.executable, "-m", "edge.eval.cli", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--coreset" in run.stdout and "--full-frame" in run.stdout
