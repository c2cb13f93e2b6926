"""What edge-view may change, below the page: the recent-frames ring and its writer, the bank
store's candidates, staging and history, and the HTTP actions as a hostile or mistaken client
meets them (real aiohttp server on a real socket: no token, a wrong one, the wrong role, bad JSON,
oversized bodies, unknown frames and versions)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from edge.bankstore import DRAWN_REGIONS, BankStore
from edge.calibration.cli import main as calibrate_main
from edge.config import load_config
from edge.pipeline.recorder import FrameRecorder
from edge.protocol import Verdict, VerdictMessage, verdict_body
from edge.recent import RecentFrames, frame_key
from edge.view.access import Access, Person
from edge.view.actions import Actions
from edge.view.recipes import RecipeEditor
from edge.view.server import make_app
from edge.view.state import LineState

OPERATOR, ENGINEER = "op-" + "a" * 24, "en-" + "b" * 24


def verdict(
    frame_id: str, kind: Verdict = Verdict.NOK, camera: str = "cam0", bank: str = "store"
) -> VerdictMessage:
    return VerdictMessage(
        station="st1", camera=camera, frame_id=frame_id, verdict=kind,
        capture_utc=datetime.now(UTC).isoformat(), capture_monotonic_ns=time.monotonic_ns(), score=12.0,
        threshold=10.0, bank_id=bank, bank_version="v0001", has_mask=kind in (Verdict.OK, Verdict.NOK),
    )  # fmt: skip


def png_of(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


# ---- the ring and its writer ---------------------------------------------------------------------
def test_the_ring_keeps_the_newest_within_its_bounds_and_never_a_path_from_an_id(tmp_path):
    ring = RecentFrames(tmp_path / "recent", max_frames=5, max_bytes=10**9)
    for i in range(8):
        ring.put(verdict_body(verdict(f"f{i}")), png_of(np.full((20, 30), i, np.uint8)))
        time.sleep(0.01)  # distinct modification times
    kept = [i for i in range(8) if ring.get("cam0", f"f{i}") is not None]
    assert kept == [3, 4, 5, 6, 7]
    assert ring.get("cam0", "f7").verdict["frame_id"] == "f7"
    hostile = "../../etc/passwd\\..\\x"
    ring.put(verdict_body(verdict(hostile)), png_of(np.zeros((4, 4), np.uint8)))
    assert ring.get("cam0", hostile).png.parent == tmp_path / "recent" / "cam0"
    assert ring.get("../cam0", "f7") is None and ring.get("cam0", "never") is None
    one = len(ring.get("cam0", "f7").png.read_bytes()) + len(json.dumps(verdict_body(verdict("f7"))))
    small = RecentFrames(tmp_path / "recent", max_frames=100, max_bytes=3 * one)  # a second writer
    small.prune()  # sees the first one's frames, and keeps the byte bound too
    assert len(list((tmp_path / "recent" / "cam0").glob("*.json"))) <= 3
    orphan = tmp_path / "recent" / "cam0" / "0123456789abcdef01234567.png"  # a crash between PNG and record
    orphan.write_bytes(b"png")
    small.prune()
    assert orphan.exists()  # it may still be being written
    os.utime(orphan, (time.time() - 120, time.time() - 120))
    small.prune()
    assert not orphan.exists()


def test_the_recorder_keeps_rejects_and_a_sample_of_ok_parts_off_the_scoring_path(tmp_path):
    ring = RecentFrames(tmp_path / "recent")
    recorder = FrameRecorder(ring, ok_every=3)
    rgb16 = np.zeros((30, 40, 3), np.uint16)
    rgb16[..., 0] = 0xFF00  # red, MSB-aligned 16-bit: kept as 8-bit red
    recorder.offer(verdict("nok", Verdict.NOK), rgb16)
    for i in range(6):
        recorder.offer(verdict(f"ok{i}", Verdict.OK), np.zeros((30, 40), np.uint8))
    recorder.offer(verdict("err", Verdict.ERROR), np.zeros((30, 40), np.uint8))
    recorder.close()
    assert recorder.counters.kept == 3 and not recorder.counters.failed
    kept = {f for f in ["nok", "err"] + [f"ok{i}" for i in range(6)] if ring.get("cam0", f)}
    assert kept == {"nok", "ok2", "ok5"}
    red = cv2.imread(str(ring.get("cam0", "nok").png))  # BGR on disk, as every PNG
    assert red.shape == (30, 40, 3) and tuple(red[0, 0]) == (0, 0, 255)


def test_a_ring_that_cannot_be_written_costs_no_verdict_and_is_counted(tmp_path):
    blocker = tmp_path / "recent"
    blocker.write_text("a file where the folder should be")
    recorder = FrameRecorder(RecentFrames(blocker))
    for i in range(3):
        recorder.offer(verdict(f"f{i}"), np.zeros((8, 8), np.uint8))
    recorder.close()
    assert recorder.counters.kept == 0 and sum(recorder.counters.failed.values()) == 3


# ---- the store: candidates, staging, history -----------------------------------------------------
def test_candidates_wait_until_a_version_that_took_them_is_active(bank_store_copy):
    store = bank_store_copy
    assert store.add_candidate(frame_key("cam0", "f1"), b"png", {"frame_id": "f1", "cleared_utc": "t1"})
    assert not store.add_candidate(frame_key("cam0", "f1"), b"png", {"frame_id": "f1"})  # once
    with pytest.raises(Exception, match="not a candidate key"):
        store.add_candidate("../x", b"png", {})
    assert [facts["frame_id"] for _, facts in store.candidates()] == ["f1"]
    from edge.engine.artifact import load_model

    model = load_model(store.active().path)  # the next version, as --add-candidates --stage makes it
    model.calibrate({"threshold": 9.0, "candidates": [{"key": frame_key("cam0", "f1"), "frame_id": "f1"}]})
    assert store.publish(model, activate=False) == "v0002"
    rows = store.reports()
    assert [(r["version"], r["active"], r["staged"]) for r in rows] == [
        ("v0001", True, False),
        ("v0002", False, True),
    ]
    assert store.active_version() == "v0001" and len(store.candidates()) == 1  # staged: still waiting

    store.activate("v0002", by="ben")
    assert store.active_version() == "v0002" and not store.candidates()
    assert (
        store.candidates_dir / "added" / "v0002" / f"{frame_key('cam0', 'f1')}.png"
    ).read_bytes() == b"png"
    assert store.history()[-1]["by"] == "ben" and store.history()[-1]["version"] == "v0002"
    store.activate("v0001", by="ben")  # a rollback: v0002 is no longer staged, it was active once
    assert [(r["active"], r["staged"]) for r in store.reports()] == [(True, False), (False, False)]


@pytest.fixture
def bank_store_copy(bank_store, tmp_path) -> BankStore:
    import shutil

    shutil.copytree(bank_store.root, tmp_path / "store")
    return BankStore(tmp_path / "store")


# ---- HTTP, as a hostile or mistaken client -------------------------------------------------------
class Server:
    """edge-view's app on a real socket, its requests made from this (sync) test."""

    def __init__(self, actions: Actions, access: Access, editor: RecipeEditor | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = make_app(LineState("st1"), threading.Lock(), actions, access, editor)
        self.server = TestServer(app, host="127.0.0.1")
        self._run(self.server.start_server())

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def call(self, method: str, path: str, token: str | None = None, body: bytes | None = None):
        async def go():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with (
                ClientSession() as session,
                session.request(method, self.server.make_url(path), data=body, headers=headers) as response,
            ):
                return response.status, await response.read()

        return self._run(go())

    def post(self, path: str, payload, token: str | None = None):
        return self.call("POST", path, token, json.dumps(payload).encode())

    def close(self) -> None:
        self._run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served(bank_store_copy, tmp_path):
    ring = RecentFrames(tmp_path / "recent")
    ring.put(
        verdict_body(verdict("reject-1", bank=bank_store_copy.bank_id)),
        png_of(np.full((16, 16), 90, np.uint8)),
    )
    ring.put(
        verdict_body(verdict("fine-1", Verdict.OK, bank=bank_store_copy.bank_id)),
        png_of(np.zeros((16, 16), np.uint8)),
    )
    ring.put(verdict_body(verdict("foreign-1", bank="another")), png_of(np.zeros((16, 16), np.uint8)))
    access = Access({OPERATOR: Person("anna", "operator"), ENGINEER: Person("ben", "engineer")})
    server = Server(Actions(bank_store_copy, ring), access)
    yield server, bank_store_copy
    server.close()


def test_actions_need_the_right_token_and_say_why_not(served):
    server, store = served
    clear = {"camera": "cam0", "frame_id": "reject-1"}
    assert server.post("/api/clear", clear)[0] == 401
    assert server.post("/api/clear", clear, token="x" * 30)[0] == 401
    status, body = server.post("/api/activate", {"version": "v0001"}, token=OPERATOR)
    assert status == 403 and b"needs engineer" in body
    assert json.loads(server.call("GET", "/api/whoami", token=OPERATOR)[1]) == {
        "name": "anna", "role": "operator", "read_only": False}  # fmt: skip
    status, body = server.post("/api/clear", clear, token=OPERATOR)
    assert status == 200 and json.loads(body)["ok"]
    ((png, facts),) = store.candidates()
    assert facts["cleared_by"] == "anna" and facts["frame_id"] == "reject-1" and facts["score"] == 12.0
    ring = RecentFrames(png.parents[2] / "recent")
    assert png.read_bytes() == ring.get("cam0", "reject-1").png.read_bytes()  # the frame, as scored
    assert json.loads(server.post("/api/clear", clear, token=ENGINEER)[1])["already"]  # once, however often


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        ({"camera": "cam0", "frame_id": "fine-1"}, 409, b"only NOK parts"),
        ({"camera": "cam0", "frame_id": "foreign-1"}, 409, b"not by this store"),
        ({"camera": "cam0", "frame_id": "gone"}, 404, b"no longer among"),
        ({"camera": "../../etc", "frame_id": "reject-1"}, 404, b"no longer among"),
        ({"camera": "cam0"}, 400, b"frame_id must be"),
        ({"camera": "cam0", "frame_id": 7}, 400, b"frame_id must be"),
        ([1, 2], 400, b"JSON object"),
    ],
)
def test_wrong_clears_are_refused_with_a_reason(served, payload, status, says):
    server, store = served
    got, body = server.post("/api/clear", payload, token=OPERATOR)
    assert got == status and says in body, body
    assert not store.candidates()


def test_malformed_and_oversized_requests_are_refused(served):
    server, _ = served
    assert server.call("POST", "/api/clear", OPERATOR, b"{not json")[0] == 400
    assert server.call("POST", "/api/clear", OPERATOR, b"x" * (1 << 20))[0] == 413
    status, body = server.post("/api/activate", {"version": "v0042"}, token=ENGINEER)
    assert status == 409 and b"no version" in body
    assert server.post("/api/build", {}, token=OPERATOR)[0] == 403  # building is an engineer's
    status, body = server.post("/api/build", {}, token=ENGINEER)
    assert status == 409 and b"no cleared rejects" in body
    assert server.call("GET", "/frame/cam0?id=gone")[0] == 404
    assert server.call("GET", "/frame/cam0?id=reject-1")[0] == 200


def test_a_store_that_cannot_be_written_is_said_not_crashed(served):
    server, store = served
    store.candidates_dir.write_text("a file where the folder should be")  # as a full or broken disk
    status, body = server.post("/api/clear", {"camera": "cam0", "frame_id": "reject-1"}, token=OPERATOR)
    assert status == 500 and b"could not do it" in body
    assert server.call("GET", "/api/whoami")[0] == 200  # and it serves on


def test_a_read_only_view_refuses_every_action(bank_store_copy, tmp_path):
    server = Server(Actions(bank_store_copy, RecentFrames(tmp_path)), Access())
    try:
        status, body = server.post("/api/clear", {"camera": "cam0", "frame_id": "x"}, token=OPERATOR)
        assert status == 403 and b"read-only" in body
    finally:
        server.close()


def test_tokens_files_are_checked_before_the_page_starts(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"anna operator {OPERATOR}\n")
    os.chmod(tokens, 0o644)
    command = [
        sys.executable,
        "-m",
        "edge.view.cli",
        "ipc:///tmp/none",
        "--station",
        "st1",
        "--tokens",
        str(tokens),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "chmod 600" in result.stderr and "Traceback" not in result.stderr
    os.chmod(tokens, 0o600)
    tokens.write_text("anna boss " + OPERATOR + "\n")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "role 'boss'" in result.stderr


def test_the_view_needs_no_torch():
    check = "import sys, edge.view.cli; assert 'torch' not in sys.modules and 'cv2' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check], timeout=60).returncode == 0


# ---- the recipe editor: regions checked, judged on the kept frames, staged as a version ---------
SIDE = 160  # the synthetic parts' frames
CENTRE = {"name": "centre", "rect": [40, 40, 80, 80], "min_area_px": 4}


def regions(*drawn: dict, width: int = SIDE, height: int = SIDE) -> dict:
    return {"recipe": "default", "frame": {"width": width, "height": height}, "regions": list(drawn)}


@pytest.fixture
def editing(bank_store_copy, synthetic_category, tmp_path):
    """edge-view with --config on a station of one recipe (`bank:` alone), its ring holding real
    frames the station judged (the synthetic line's test parts)."""
    ring = RecentFrames(tmp_path / "recent")
    for index, sample in enumerate(synthetic_category.test[::3]):
        said = verdict_body(verdict(f"kept-{index}", bank=bank_store_copy.bank_id)) | {"recipe": "default"}
        ring.put(said, sample.path.read_bytes())
    station = tmp_path / "station.yaml"
    ipc = {k: f"ipc://{tmp_path}/{k}" for k in ("frames", "results", "publish", "control")}
    station.write_text(yaml.safe_dump({
        "station": "st1", "bank": {"path": str(bank_store_copy.root)}, "endpoints": ipc,
        "recent_frames": {"path": str(tmp_path / "recent")},
        "cameras": [{"name": "cam0", "source": {"kind": "synthetic", "size": SIDE}}],
    }))  # fmt: skip
    config = load_config(station)
    editor = RecipeEditor(config, station, ring)
    access = Access({OPERATOR: Person("anna", "operator"), ENGINEER: Person("ben", "engineer")})
    actions = Actions(bank_store_copy, ring, stores={"default": bank_store_copy})
    server = Server(actions, access, editor)
    yield server, bank_store_copy
    server.close()


@pytest.mark.parametrize("path", ["/api/what-if", "/api/regions"])
@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        (regions({"name": "a", "polygon": [[0, 0], [50, 50], [50, 0], [0, 50]]}), 400, b"crosses itself"),
        (regions({"name": "a", "rect": [150, 0, 20, 20]}), 400, b"leaves the 160x160 frame at [170, 0]"),
        (regions(CENTRE, CENTRE), 400, b"must be unique; repeated: ['centre']"),
        (
            regions(CENTRE | {"min_area_px": -3}),
            400,
            b"min_area_px: Input should be greater than or equal to 0",
        ),
        (regions(CENTRE | {"colour": "red"}), 400, b"colour"),
        (
            regions({"name": "tag", "mode": "ignore", "rect": [0, 0, 9, 9], "threshold": 2.0}),
            400,
            b"has no rule",
        ),
        (regions(CENTRE | {"min_area_mm2": 0.5}), 400, b"every camera needs mm_per_px"),
        (regions(CENTRE, width=0), 400, b"frame.width"),
        ({"recipe": "default", "regions": [CENTRE]}, 400, b"send the regions as"),
        (regions(CENTRE) | {"recipe": "bottle"}, 404, b"no recipe 'bottle'; this station's: default"),
        (regions(CENTRE) | {"recipe": ["default"]}, 400, b"recipe must be printable text"),
    ],
)
def test_drawn_regions_are_refused_by_the_station_files_rules_with_one_line(
    editing, path, payload, status, says
):
    server, store = editing
    got, body = server.post(path, payload, token=ENGINEER)
    assert got == status and says in body, body
    assert b"\n" not in body and store.versions() == ["v0001"]  # one line; nothing staged


def test_only_an_engineer_edits_regions_and_only_where_edge_view_has_the_station_file(
    editing, bank_store_copy
):
    server, _ = editing
    assert server.post("/api/what-if", regions(CENTRE))[0] == 401
    status, body = server.post("/api/regions", regions(CENTRE), token=OPERATOR)
    assert status == 403 and b"needs engineer" in body
    assert server.call("POST", "/api/regions", ENGINEER, b"{not json")[0] == 400
    bare = Server(Actions(bank_store_copy, None), Access({ENGINEER: Person("ben", "engineer")}))
    try:
        status, body = bare.post("/api/what-if", regions(CENTRE), token=ENGINEER)
        assert status == 409 and b"without --config" in body
        assert json.loads(bare.call("GET", "/api/recipes")[1])["recipes"] == []
    finally:
        bare.close()


def test_regions_are_staged_only_after_a_what_if_judged_them_and_travel_with_later_versions(
    editing, synthetic_category, tmp_path
):
    server, store = editing
    listed = json.loads(server.call("GET", "/api/recipes")[1])["recipes"]
    assert [(r["name"], r["regions"], r["drawn"]) for r in listed] == [("default", [], None)]
    assert server.call("GET", "/recipe-image/default")[0] == 200  # the newest kept frame to draw on
    assert server.call("GET", "/recipe-image/..%2Fetc")[0] == 404

    status, body = server.post("/api/regions", regions(CENTRE), token=ENGINEER)
    assert status == 409 and b"run the what-if on these regions first" in body
    status, body = server.post("/api/what-if", regions(CENTRE), token=ENGINEER)
    assert status == 200, body
    report = json.loads(body)["report"]
    kept = len(synthetic_category.test[::3])
    assert (
        report["frames"] == kept and sum(report["before"].values()) == sum(report["after"].values()) == kept
    )
    changed = [c for c in report["changed"] if c["before"]["verdict"] != c["after"]["verdict"]]
    assert report["verdicts_changed"] == len(changed)
    assert all(c["after"]["region"] in (None, "centre") for c in report["changed"])

    other = regions(CENTRE | {"min_area_px": 40})  # not what the what-if judged
    assert server.post("/api/regions", other, token=ENGINEER)[0] == 409
    status, body = server.post("/api/regions", regions(CENTRE), token=ENGINEER)
    assert status == 200 and json.loads(body)["version"] == "v0002", body
    assert store.active_version() == "v0001"  # staged, not active
    drawn = store.record("v0002")[DRAWN_REGIONS]
    assert drawn["by"] == "ben" and drawn["based_on"] == "v0001" and drawn["regions"][0]["name"] == "centre"
    assert [r["regions"] for r in store.reports()][1]["by"] == "ben"

    assert server.post("/api/activate", {"version": "v0002", "recipe": "default"}, token=ENGINEER)[0] == 200
    listed = json.loads(server.call("GET", "/api/recipes")[1])["recipes"]
    assert listed[0]["drawn"]["by"] == "ben" and listed[0]["regions"][0]["rect"] == [40, 40, 80, 80]
    good = tmp_path / "more-good"
    good.mkdir()
    for path in synthetic_category.train:
        good.joinpath(path.name).write_bytes(path.read_bytes())
    command = ["--from-folder", str(good), "--out", str(store.root), "--coreset", "0.1", "--quiet"]
    assert calibrate_main(command) == 0
    assert store.active_version() == "v0003"  # a new calibration keeps the regions drawn on the page
    assert store.record("v0003")[DRAWN_REGIONS]["regions"] == drawn["regions"]
