"""edge-calibrate: frame screening, thresholds from good frames only, versions, --add, rollback,
interrupted writes, and the worker switching banks mid-stream."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zmq

from edge.bankstore import BankStore
from edge.calibration.cli import main as calibrate_main
from edge.calibration.procedure import calibrate
from edge.calibration.quality import FrameStats, screen
from edge.calibration.threshold import choose_threshold
from edge.config import CalibrationConfig
from edge.engine.artifact import load_model
from edge.errors import ArtifactError
from edge.imageio import read_image
from edge.pipeline.inspection import Bank
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.sources import SyntheticSource
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, decode_reply, encode_control, encode_frame


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, synthetic_category):
    """The synthetic category's 12 training images as a folder of good frames."""
    folder = tmp_path_factory.mktemp("good")
    for path in synthetic_category.train:
        shutil.copy(path, folder / path.name)
    return folder


def test_every_stage_reports_progress_up_to_its_own_total(tmp_path, good_folder):
    """A long fit never sits at 0/1: the folds and the final bank's coreset say how far they are."""
    seen: dict[str, list[tuple[int, int]]] = {}
    frames = [read_image(path) for path in sorted(good_folder.glob("*.png"))]
    store = BankStore(tmp_path / "banks")
    result = calibrate(
        store,
        frames,
        CalibrationConfig(coreset_fraction=0.1),
        progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)),
    )
    assert list(seen) == ["screen frames", "keep frames", "embed", "held-out scores", "final bank"]
    assert seen["screen frames"][-1] == (12, 12)
    assert seen["held-out scores"][-1] == (5, 5)  # 5 folds of 12 frames
    rows = load_model(store.path_of(result.version)).bank.shape[0]
    assert seen["final bank"][-1] == (rows, rows)  # rounds in between: tests/unit/test_coreset.py
    for updates in seen.values():
        assert [done for done, _ in updates] == sorted(done for done, _ in updates)


def test_a_bounded_calibration_reads_frames_and_embeddings_back_and_shows_its_chunks(tmp_path, good_folder):
    """Frames come from files as asked (ImageFiles) and embeddings from the spool: the result is
    the one an in-memory list of frames gives, bit for bit; with `fit_chunk_rows` the final bank's
    reductions are a stage of their own."""
    from edge.imageio import ImageFiles

    paths = sorted(good_folder.glob("*.png"))
    recipe = CalibrationConfig(coreset_fraction=0.1)
    in_memory = calibrate(BankStore(tmp_path / "a"), [read_image(p) for p in paths], recipe, progress=None)
    from_files = calibrate(BankStore(tmp_path / "b"), ImageFiles(paths), recipe)
    assert from_files.record["threshold"] == in_memory.record["threshold"]
    assert from_files.record["held_out_scores"] == in_memory.record["held_out_scores"]
    model_a = load_model(BankStore(tmp_path / "a").path_of(in_memory.version))
    model_b = load_model(BankStore(tmp_path / "b").path_of(from_files.version))
    assert torch.equal(model_a.bank, model_b.bank)

    rows = model_a.info["total_patches"]  # of all 12 frames
    seen: dict[str, list[tuple[int, int]]] = {}
    bounded = calibrate(
        BankStore(tmp_path / "c"),
        ImageFiles(paths),
        CalibrationConfig(coreset_fraction=0.1, fit_chunk_rows=rows // 4),
        progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)),
    )
    chunks = seen["final bank chunks"]
    assert len(chunks) in (3, 4) and [d for d, _ in chunks] == list(range(1, len(chunks) + 1))
    assert BankStore(tmp_path / "c").path_of(bounded.version).is_file()


def test_screening_rejects_copies_blur_and_bad_exposure_and_nothing_else():
    source = SyntheticSource(160, defect_rate=0.0, seed=7)
    parts = [source.read() for _ in range(12)]
    rng = np.random.default_rng(0)
    noisy_copies = [
        np.clip(parts[i] + rng.normal(0, 2, parts[i].shape), 0, 255).astype(np.uint8) for i in (0, 5, 9)
    ]
    blurred = [cv2.GaussianBlur(parts[i], (0, 0), 1.5) for i in (1, 2)]
    over = [np.clip(parts[3].astype(np.int32) + 120, 0, 255).astype(np.uint8)]
    under = [(parts[4] // 8).astype(np.uint8)]
    frames = parts + noisy_copies + blurred + over + under
    report = screen([FrameStats.of(f) for f in frames])
    assert report.accepted == list(range(12))
    assert report.rejected == {"near_duplicate": 3, "blurred": 2, "over_exposed": 1, "under_exposed": 1}


def test_threshold_quantile_bound_and_warnings():
    rng = np.random.default_rng(0)
    scores = rng.lognormal(3.0, 0.1, 400)
    choice = choose_threshold(scores, target_frr=0.01, margin=0.0, method="5-fold")
    assert choice.threshold == max(choice.quantile_threshold, choice.tail_threshold)
    assert choice.above == int((scores > choice.threshold).sum()) and choice.expected_frr <= 0.01
    assert choice.frames_needed == 299 and not choice.warnings  # 400 frames can show 1 %
    clear = choose_threshold(scores[:300], target_frr=0.01, margin=0.5, method="5-fold")
    assert clear.above == 0  # Clopper-Pearson with none above has a closed form: 1 - 0.05^(1/n)
    assert clear.frr_upper_95 == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-6)
    few = choose_threshold(scores[:5], target_frr=0.01, margin=0.1, method="leave-one-out")
    assert few.threshold == pytest.approx(1.1 * max(few.quantile_threshold, few.tail_threshold))
    assert any("low-shot" in w for w in few.warnings) and any("collect about 299" in w for w in few.warnings)


def report_of(path) -> dict:
    return json.loads(path.read_text())


def test_calibrate_add_rollback_and_list(tmp_path, good_folder, synthetic_category, capsys):
    store = BankStore(tmp_path / "banks")
    first = tmp_path / "first.json"
    assert (
        calibrate_main(
            [
                "--from-folder",
                str(good_folder),
                "--out",
                str(store.root),
                "--coreset",
                "0.1",
                "--json",
                str(first),
                "--quiet",
            ]
        )
        == 0
    )
    one = report_of(first)
    assert (one["version"], one["frames"], one["method"]) == ("v0001", 12, "5-fold")
    assert store.active_version() == "v0001" and load_model(store.active().path).threshold == one["threshold"]

    extra = tmp_path / "cleared"
    extra.mkdir()
    for sample in [s for s in synthetic_category.test if s.label == 0]:
        shutil.copy(sample.path, extra / sample.path.name)
    shutil.copy(good_folder / sorted(p.name for p in good_folder.iterdir())[0], extra / "again.png")  # known
    second = tmp_path / "second.json"
    assert (
        calibrate_main(["--add", str(extra), "--out", str(store.root), "--json", str(second), "--quiet"]) == 0
    )
    two = report_of(second)
    assert two["version"] == "v0002" and two["frames"] == 12 + 4
    assert two["quality"]["rejected"] == {"near_duplicate": 1}
    assert store.versions() == ["v0001", "v0002"] and store.active_version() == "v0002"
    assert load_model(store.active().path).info["calibration"]["recipe"]["coreset_fraction"] == 0.1  # reused

    assert calibrate_main(["--rollback", "v0001", "--out", str(store.root)]) == 0
    assert store.active_version() == "v0001" and store.active().path.name == "v0001.edge"
    assert calibrate_main(["--list", "--out", str(store.root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["active"], v["frames"]) for v in listed] == [
        ("v0001", True, 12),
        ("v0002", False, 16),
    ]
    assert calibrate_main(["--rollback", "v0007", "--out", str(store.root)]) == 2  # no such version
    assert (
        calibrate_main(["--add", str(good_folder), "--out", str(store.root), "--quiet"]) == 2
    )  # only copies
    assert store.active_version() == "v0001"


def test_cleared_rejects_build_a_staged_version_that_someone_activates(
    tmp_path, good_folder, synthetic_category
):
    store = BankStore(tmp_path / "banks")
    assert calibrate_main(["--from-folder", str(good_folder), "--out", str(store.root), "--coreset", "0.1",
                           "--quiet"]) == 0  # fmt: skip
    assert calibrate_main(["--add-candidates", "--out", str(store.root)]) == 2  # none waiting: said, exit 2
    defective = [s.path for s in synthetic_category.test if s.label == 1][:2]
    copy = str(good_folder / sorted(p.name for p in good_folder.iterdir())[0])
    for number, path in enumerate([*defective, copy]):  # two "false rejects" and a frame already kept
        facts = {"frame_id": f"f{number}", "cleared_by": "anna", "cleared_utc": f"2026-12-02T10:0{number}"}
        store.add_candidate(f"{number:08x}", Path(path).read_bytes(), facts)
    report = tmp_path / "staged.json"
    assert calibrate_main(["--add-candidates", "--stage", "--out", str(store.root), "--json", str(report),
                           "--quiet"]) == 0  # fmt: skip
    staged = report_of(report)
    assert staged["version"] == "v0002" and not staged["active"] and store.active_version() == "v0001"
    assert staged["frames"] == 14 and [c["refused"] for c in staged["candidates"]] == [
        None,
        None,
        "near_duplicate",
    ]
    assert [c["cleared_by"] for c in staged["candidates"]] == ["anna"] * 3
    assert len(store.candidates()) == 3  # they wait until v0002 is active
    assert [(r["version"], r["staged"]) for r in store.reports()] == [("v0001", False), ("v0002", True)]

    assert calibrate_main(["--activate", "v0002", "--by", "ben", "--out", str(store.root)]) == 0
    assert store.active_version() == "v0002" and store.history()[-1]["by"] == "ben"
    assert (
        not store.candidates() and len(list((store.candidates_dir / "added" / "v0002").glob("*.json"))) == 3
    )
    assert calibrate_main(["--stage", "--out", str(store.root)]) == 2  # --stage alone builds nothing


@pytest.mark.parametrize("count", [1, 3])
def test_low_shot_calibration_works_and_warns(tmp_path, good_folder, count, caplog):
    folder = tmp_path / "few"
    folder.mkdir()
    for path in sorted(good_folder.iterdir())[:count]:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "report.json"
    assert (
        calibrate_main(
            [
                "--from-folder",
                str(folder),
                "--out",
                str(tmp_path / "banks"),
                "--coreset",
                "0.1",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = report_of(out)
    assert report["method"] == ("augmented copies of one frame" if count == 1 else "leave-one-out")
    assert any("low-shot" in w for w in report["warnings"]) and "low-shot" in caplog.text
    assert report["threshold"] > 0


@pytest.mark.parametrize("writes_before_full", [0, 24])  # 24: the 12 frames (file + folder each) fit
def test_disk_full_while_writing_leaves_the_active_version(
    tmp_path, bank_store, good_folder, monkeypatch, writes_before_full
):
    store = BankStore(tmp_path / "banks")
    shutil.copytree(bank_store.root, store.root)
    writes = []
    real_fsync = os.fsync

    def filling(fd):
        writes.append(fd)
        if len(writes) > writes_before_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("edge.files.os.fsync", filling)
    code = calibrate_main(
        ["--from-folder", str(good_folder), "--out", str(store.root), "--coreset", "0.1", "--quiet"]
    )
    monkeypatch.undo()
    assert code == ArtifactError.exit_code
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
    assert store.versions() == ["v0001"] and store.active_version() == "v0001"
    assert load_model(store.active().path).threshold is not None
    assert len(list(store.frames_dir.glob("*.png"))) == (12 if writes_before_full else 0)


def test_killing_calibrate_at_any_moment_leaves_a_loadable_active_bank(tmp_path, bank_store, good_folder):
    store = BankStore(tmp_path / "banks")
    shutil.copytree(bank_store.root, store.root)
    command = [
        sys.executable,
        "-m",
        "edge.calibration.cli",
        "--from-folder",
        str(good_folder),
        "--out",
        str(store.root),
        "--coreset",
        "0.1",
        "--quiet",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    full_run = time.monotonic() - started
    store.activate("v0001")
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.95, 0.98):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * full_run)
        process.send_signal(signal.SIGKILL)
        process.wait()
        active = store.active()  # always a complete version that loads
        assert load_model(active.path).threshold is not None
        assert all(load_model(store.path_of(v)).bank.shape[0] > 0 for v in store.versions())
        store.activate("v0001")


def test_worker_switches_banks_between_frames_on_reload(tmp_path, bank_store, synthetic_category):
    """Hot reload mid-stream: no frame lost or scored twice; the bank version changes exactly once."""
    store = BankStore(tmp_path / "banks")
    shutil.copytree(bank_store.root, store.root)

    def load() -> Bank:  # as the worker service loads: warmed up before any frame waits for it
        ref = store.active()
        model = load_model(ref.path)
        model.warm_up(batches=(1, 4))
        return Bank(model, model.threshold, ref.bank_id, ref.version)

    context = zmq.Context()
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub", "control")}
    publisher = Publisher(
        PublisherSettings("s", endpoints["results"], endpoints["pub"], heartbeat_s=0.1), context
    )
    worker = Worker(
        load(),
        WorkerSettings(
            "s", endpoints["frames"], endpoints["results"], max_batch=4, control_endpoint=endpoints["control"]
        ),
        context,
        load_bank=load,
    )
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (publisher, worker)]
    for thread in threads:
        thread.start()
    results = context.socket(zmq.SUB)
    results.setsockopt(zmq.SUBSCRIBE, b"verdict.")
    results.setsockopt(zmq.SUBSCRIBE, b"heartbeat.")
    results.connect(endpoints["pub"])
    assert results.poll(30_000), "no heartbeat: the subscription did not reach the publisher"
    results.setsockopt(zmq.UNSUBSCRIBE, b"heartbeat.")  # subscribed: from here on, verdicts only
    sender = context.socket(zmq.PUSH)
    sender.connect(endpoints["frames"])
    image = read_image(synthetic_category.test[0].path)
    new = load_model(store.active().path)
    new.calibrate({"threshold": 2.0 * new.threshold, "frames": [], "recipe": {}})
    control = context.socket(zmq.REQ)
    control.connect(endpoints["control"])

    def send(seq: int) -> None:
        header = FrameHeader("s", "c", seq, f"f{seq}", "t", time.monotonic_ns(), *image.shape[:2], 3)
        sender.send_multipart(encode_frame(header, image))

    for seq in range(30):
        send(seq)
        if seq == 15:
            store.publish(new)
            control.send_multipart(encode_control("reload"))
        time.sleep(0.03)
    assert control.poll(30_000), "the worker did not answer the reload request"
    reply = decode_reply(control.recv_multipart())  # swapped in: frames sent from now are the new bank's
    for seq in range(30, 40):
        send(seq)
    verdicts = {}
    while len(verdicts) < 40 and results.poll(10_000):
        topic, header = results.recv_multipart()
        if not topic.startswith(b"verdict."):
            continue  # a heartbeat sent before the unsubscription took effect
        body = json.loads(header)
        assert body["frame_id"] not in verdicts
        verdicts[body["frame_id"]] = body
    stop.set()
    for thread in threads:
        thread.join(10)
    context.destroy(linger=0)
    assert reply == {"schema": 3, "ok": True, "bank_id": "banks", "bank_version": "v0002",
                     "recipes": ["default"], "selected": {}}  # fmt: skip
    assert sorted(verdicts) == sorted(f"f{i}" for i in range(40)) and worker.counters.frames_in == 40
    versions = [verdicts[f"f{i}"]["bank_version"] for i in range(40)]
    switch = versions.index("v0002")  # however long the reload took, frames after its reply are new
    assert 1 <= switch <= 30 and versions == ["v0001"] * switch + ["v0002"] * (40 - switch)
    assert {verdicts[f"f{i}"]["threshold"] for i in range(switch, 40)} == {new.threshold}
