"""edge-view in a real browser (Debian's headless Chromium, driven by playwright) against a real
publisher on real sockets: live verdicts within 1 s, a NOK part's mask drawn, and the page telling a
silent publisher and recovering when it is back. With EDGE_UPDATE_SCREENSHOTS=1 it also refreshes
docs/images/edge-view.png."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from station_kit import STATION as KIT_STATION
from station_kit import Line as StationLine
from station_kit import start_station, station_config, stop_station, wait_for_worker

from edge.bankstore import BankStore
from edge.calibration.cli import main as calibrate_main
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.protocol import CameraState, Verdict, VerdictMessage, encode_camera_report, encode_result

STATION = "line1"
SCREENSHOT = Path(__file__).parents[2] / "docs" / "images" / "edge-view.png"


def _chromium() -> str:
    path = shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        why = "Debian's chromium or the playwright package is missing"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run installs them")
        pytest.skip(f"{why} (.ci/run installs them)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Line:
    """A publisher on a thread (real sockets), and a worker's side that sends it results."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.context = zmq.Context()
        self.results = self.context.socket(zmq.PUSH)
        self.results.connect(f"ipc://{folder}/results")
        self.seq = 0
        self.start()

    def start(self) -> None:
        settings = PublisherSettings(STATION, f"ipc://{self.folder}/results", f"ipc://{self.folder}/pub",
                                     heartbeat_s=0.2, cameras=("top", "side"))  # fmt: skip
        self.publisher = Publisher(settings, self.context)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.publisher.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def kill(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def send(self, camera: str, verdict: Verdict, score: float) -> str:
        self.seq += 1
        frame_id = f"{camera}-{self.seq:04d}"
        mask = np.zeros((120, 160), np.uint8)
        if verdict == Verdict.NOK:
            cv2.circle(mask, (100, 60), 18, 255, -1)
        message = VerdictMessage(
            station=STATION, camera=camera, frame_id=frame_id, verdict=verdict,
            capture_utc=datetime.now(UTC).isoformat(), capture_monotonic_ns=time.monotonic_ns(),
            part_id=f"P{self.seq}", score=score, threshold=10.0, bank_id="banks", bank_version="v0003",
            backend="torch-cpu", latency_ms={"total": 20.0 + self.seq % 7}, has_mask=True, recipe="bottle",
            **(REJECTED if verdict == Verdict.NOK else {}),
        )  # fmt: skip
        self.results.send_multipart(encode_result(message, cv2.imencode(".png", mask)[1].tobytes()))
        return frame_id

    def close(self) -> None:
        self.kill()
        self.context.destroy(linger=0)


# a reject's reason, as the worker writes it (docs/recipes.md)
REJECTED = {
    "reason": "defect",
    "region": "seal",
    "defects": [{"region": "seal", "area_px": 1017, "box": [82, 42, 37, 37], "peak": 14.0, "threshold": 10.0,
                 "area_mm2": 2.54}],
}  # fmt: skip


@pytest.fixture
def view(tmp_path):
    chromium = _chromium()
    line = Line(tmp_path)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "edge.view.cli", f"ipc://{tmp_path}/pub", "--station", STATION,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        deadline = time.monotonic() + 30
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield line, page
        browser.close()
    line.close()
    server.terminate()
    output, _ = server.communicate(timeout=10)
    assert server.returncode in (0, -15), output
    assert "Traceback" not in output, output


def test_edge_view_has_help():
    result = subprocess.run([sys.executable, "-m", "edge.view.cli", "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "exit codes" in result.stdout and "--bind" in result.stdout


def test_a_camera_away_is_shown_dead_with_its_reason(view):
    """A camera whose capture reports it gone is drawn dead, its latest (OK) verdict dimmed, the
    reason spelled out; once it streams again it is drawn live."""
    line, page = view
    page.wait_for_selector("#health.alive", timeout=10_000)
    line.send("side", Verdict.OK, 2.0)
    since = datetime.now(UTC).isoformat()
    gone = CameraState("gone", since, "the RTSP server answered 404 Not Found")
    line.results.send_multipart(encode_camera_report(STATION, "side", gone))
    page.wait_for_selector("#camera-side.dead [data-role=camera-state][data-state=gone]", timeout=3000)
    assert "404 Not Found" in page.inner_text("#camera-side [data-role=camera-state]")
    back = CameraState("streaming", since, None, 640, 480, reconnects=1)
    line.results.send_multipart(encode_camera_report(STATION, "side", back))
    page.wait_for_selector(
        "#camera-side:not(.dead) [data-role=camera-state][data-state=streaming]", timeout=3000
    )
    assert "640×480" in page.inner_text("#camera-side [data-role=camera-state]")


def test_live_verdicts_masks_and_a_publisher_restart(view):
    line, page = view
    page.wait_for_selector("#health.alive", timeout=10_000)
    for _ in range(30):  # a history for the counts, rates and histogram
        line.send("side", Verdict.OK, float(np.random.default_rng(line.seq).uniform(3, 9)))
    frame = line.send("top", Verdict.OK, 6.0)
    published = time.monotonic()
    page.wait_for_selector(f"[data-role=verdict][data-frame='{frame}']", timeout=1000)
    assert time.monotonic() - published < 1.0  # shown within 1 s of publication
    reject = line.send("top", Verdict.NOK, 14.0)
    page.wait_for_selector(f"[data-role=verdict][data-frame='{reject}']", timeout=1000)
    page.wait_for_selector(f"#camera-top canvas[data-role=overlay][data-frame='{reject}'][data-drawn=mask]",
                           timeout=2000)  # fmt: skip
    red = page.evaluate(
        """frame => { const c = document.querySelector(`#camera-top canvas[data-frame='${frame}']`);
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
           for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 80) n++;
           return n / (c.width * c.height); }""",
        reject,
    )  # the mask's disc (18 px radius in 160x120: 5.3 % of the frame) drawn in red
    assert 0.04 < red < 0.07
    if os.environ.get("EDGE_UPDATE_SCREENSHOTS"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    assert page.locator("#gallery button").count() == 1
    page.select_option("#filter-verdict", "ERROR")  # the gallery filters by verdict and camera
    page.wait_for_function("document.querySelectorAll('#gallery button').length === 0", timeout=2000)
    page.select_option("#filter-verdict", "NOK")
    page.select_option("#filter-camera", "side")
    page.wait_for_function("document.querySelectorAll('#gallery button').length === 0", timeout=2000)
    page.select_option("#filter-camera", "top")
    page.wait_for_selector(f"#gallery button[data-frame='{reject}']", timeout=2000)
    page.click(f"#gallery button[data-frame='{reject}']")  # the gallery opens the part
    page.wait_for_selector(f"#inspect-overlay[data-frame='{reject}'][data-drawn=mask]", timeout=2000)
    facts = page.inner_text("#inspect-facts")  # the reason travels to the page
    assert "bottle" in facts and "defect in seal (1 defect, largest 1017 px, 2.54 mm²)" in facts
    assert "read-only" in page.inner_text("#inspect-status")  # no --tokens: nobody can clear it
    assert page.locator("#clear").is_hidden()
    assert page.inner_text("#camera-top [data-count=NOK]") == "1"
    assert page.inner_text("#camera-side [data-count=OK]") == "30"
    assert page.locator("#camera-side line[data-role=threshold]").count() == 1

    line.kill()  # the publisher goes away: the page says so
    page.wait_for_selector("#health.silent", timeout=8000)
    assert "silent" in page.inner_text("#health")
    line.start()  # and comes back: the page recovers, with the restart counted
    page.wait_for_selector("#health.alive", timeout=10_000)
    after = line.send("top", Verdict.OK, 5.0)
    page.wait_for_selector(f"[data-role=verdict][data-frame='{after}']", timeout=3000)
    assert "restarts 1" in page.inner_text("#losses")


def _sign_in(page, token: str, name: str) -> None:
    if page.locator("#sign-out").is_visible():
        page.click("#sign-out")
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_function(f"document.getElementById('who').textContent.startsWith('{name}')", timeout=5000)


@dataclass
class ViewKit:
    store: BankStore
    line: StationLine
    port: int
    station_output: str = ""


@contextlib.contextmanager
def station_with_view(tmp_path: Path, synthetic_category, tokens: str, *view_args: str) -> Iterator[ViewKit]:
    """A real station (edge-run, recent frames kept, a bank calibrated from the synthetic line's
    good parts) and edge-view on it with these `tokens` and arguments ({recent}, {store},
    {control} and {config} name the station's); on leaving, both stopped and their logs checked."""
    good = tmp_path / "good"
    good.mkdir()
    for path in synthetic_category.train:
        shutil.copy(path, good / path.name)
    store = BankStore(tmp_path / "store")
    command = ["--from-folder", str(good), "--out", str(store.root), "--coreset", "0.1", "--quiet"]
    assert calibrate_main(command) == 0
    recent = tmp_path / "recent"
    config = station_config(tmp_path, store.root, recent=recent)
    station = start_station(config)
    (tmp_path / "tokens").write_text(tokens)
    (tmp_path / "tokens").chmod(0o600)
    names = {"recent": recent, "store": store.root, "control": f"ipc://{tmp_path}/control", "config": config}
    port = _free_port()
    view = subprocess.Popen(
        [sys.executable, "-m", "edge.view.cli", f"ipc://{tmp_path}/pub", "--station", KIT_STATION,
         "--port", str(port), "--tokens", str(tmp_path / "tokens"), *(a.format(**names) for a in view_args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    context = zmq.Context()
    kit = ViewKit(store, StationLine(context, tmp_path), port)
    try:
        kit.line.wait_for_publisher()
        wait_for_worker(f"ipc://{tmp_path}/control")
        yield kit
    finally:
        view.terminate()
        output, _ = view.communicate(timeout=10)
        code, kit.station_output = stop_station(station)
        kit.line.subscriber.close()
        context.destroy(linger=0)
        print(f"edge-view said:\n{output}\nthe station said:\n{kit.station_output}")  # shown on failure
    assert "Traceback" not in output and "Traceback" not in kit.station_output, output + kit.station_output
    assert code == 0


def test_an_operator_clears_a_false_reject_and_an_engineer_activates_the_next_bank(
    tmp_path, synthetic_category
):
    """The whole loop on a real station (edge-run, frames kept by its worker): a NOK part's frame
    under its mask, cleared as good by an operator, fitted into a staged version by edge-calibrate
    --add-candidates started from the page, shown with its threshold and false-reject rate, activated
    by an engineer, and the station scoring with it."""
    chromium = _chromium()
    operator, engineer = "anna-" + "1" * 24, "ben-" + "2" * 24
    people = f"# who may act\nanna operator {operator}\nben engineer {engineer}  # shift lead\n"
    with station_with_view(tmp_path, synthetic_category, people, "--recent", "{recent}", "--store",
                           "{store}", "--control", "{control}") as kit:  # fmt: skip
        store, line, port = kit.store, kit.line, kit.port
        parts = [f"p{i:02d}" for i in range(16)]
        line.trigger_parts(parts)
        line.collect_until_answered(parts, 60)
        rejects = [line.verdicts[p][0] for p in parts if line.verdicts[p][0].verdict == Verdict.NOK]
        assert rejects, "the synthetic line made no NOK part"
        reject = rejects[0]

        from playwright.sync_api import sync_playwright

        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/")
            _sign_in(page, operator, "anna")
            page.click(f"#gallery button[data-frame='{reject.frame_id}']", timeout=10_000)
            page.wait_for_selector("#inspect-overlay[data-drawn='frame+mask']", timeout=5000)
            assert page.locator("[data-action=activate]").count() == 0  # an operator does not activate
            page.click("#clear")
            page.click("#clear-confirm")
            page.wait_for_selector("#inspect-status[data-result=filed]", timeout=5000)
            page.wait_for_selector(f"#candidates tr[data-frame='{reject.frame_id}']", timeout=8000)
            assert "cleared by anna" in page.inner_text("#candidates")

            _sign_in(page, engineer, "ben")  # builds the next version from the page (staged)
            page.click("#build-start")
            page.click("#build-start")  # the confirmation
            page.wait_for_selector("#build-status[data-state=built]", timeout=300_000)
            assert store.active_version() == "v0001"  # staged, not active
            staged = store.record("v0002")["calibration"]
            assert [c["cleared_by"] for c in staged["candidates"]] == ["anna"] and len(staged["frames"]) == 13
            expected_frr = staged["choice"]["expected_frr"]

            row = "#versions tr[data-version=v0002]"
            page.wait_for_function(
                f"document.querySelector(\"{row}\")?.textContent.includes('staged')", timeout=8000
            )
            assert f"{100 * expected_frr:.1f} %" in page.inner_text(row)
            page.click(f"{row} [data-action=activate]")
            page.wait_for_timeout(5500)  # the table refreshes every 5 s: the confirmation stays pending
            assert "Confirm v0002" in page.inner_text(f"{row} [data-action=activate]")
            page.click(f"{row} [data-action=activate]")  # the confirmation
            page.wait_for_function(
                "!document.getElementById('bank-status').textContent.startsWith('activating')",
                timeout=120_000,
            )
            said = page.inner_text("#bank-status")
            assert "scores with it" in said, said
            page.wait_for_function(  # the worker's own word, from its control endpoint
                "document.getElementById('station-bank').textContent.includes('scores with store v0002')",
                timeout=10_000,
            )
            if os.environ.get("EDGE_UPDATE_SCREENSHOTS"):
                shot = SCREENSHOT.with_name("edge-view-clear.jpg")
                page.locator("aside").screenshot(path=str(shot), quality=70)
            browser.close()

        assert store.active_version() == "v0002" and store.history()[-1]["by"] == "ben"
        assert not store.candidates() and list((store.candidates_dir / "added" / "v0002").glob("*.png"))
        line.trigger_parts(["after"])
        line.collect_until_answered(["after"], 30)
        assert line.verdicts["after"][0].bank_version == "v0002"  # the station scores with it


def test_an_engineer_draws_regions_sees_what_they_change_and_the_station_judges_by_them(
    tmp_path, synthetic_category
):
    """The recipe editor on a real station (edge-run, frames kept by its worker; edge-view --config):
    a region drawn with the mouse on the newest kept frame, its rule set, a what-if on the kept
    parts, staged, activated with its confirmation, and the station's next verdicts judged by it."""
    chromium = _chromium()
    engineer = "ben-" + "2" * 24
    with station_with_view(
        tmp_path, synthetic_category, f"ben engineer {engineer}\n", "--config", "{config}"
    ) as kit:
        store, line, port = kit.store, kit.line, kit.port
        parts = [f"p{i:02d}" for i in range(12)]
        line.trigger_parts(parts)
        line.collect_until_answered(parts, 60)
        assert any(line.verdicts[p][0].verdict == Verdict.NOK for p in parts), "no part was kept"

        from playwright.sync_api import sync_playwright

        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}/")
            _sign_in(page, engineer, "ben")
            page.wait_for_selector("#recipe-canvas[data-drawn='image:0']", timeout=10_000)
            assert "the whole frame is judged" in page.inner_text("#recipe-source")
            page.fill("#region-name", "centre")
            page.locator("#recipe-canvas").scroll_into_view_if_needed()
            box = page.locator("#recipe-canvas").bounding_box()
            page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.25 * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.75 * box["width"], box["y"] + 0.75 * box["height"], steps=6)
            page.mouse.up()
            row = "#region-table tr[data-region=centre]"
            page.fill(f"{row} input[data-field=min_area_px]", "12")
            page.press(f"{row} input[data-field=min_area_px]", "Enter")
            assert page.locator("#stage-regions").is_hidden()  # no staging before a what-if
            page.click("#what-if")
            page.wait_for_selector("#recipe-status[data-state=judged]", timeout=120_000)
            said = page.inner_text("#recipe-status")
            assert "kept parts judged again" in said and "would change" in said, said
            page.click("#stage-regions")
            page.click("#stage-regions")  # the confirmation
            page.wait_for_selector("#recipe-status[data-state=staged]", timeout=10_000)
            drawn = store.record("v0002")["drawn_regions"]["regions"]
            assert drawn[0]["name"] == "centre" and drawn[0]["min_area_px"] == 12
            x, y, w, h = drawn[0]["rect"]  # the drag, in frame pixels (160 px frames)
            assert abs(x - 40) <= 2 and abs(y - 40) <= 2 and abs(w - 80) <= 2 and abs(h - 80) <= 2
            assert store.active_version() == "v0001"

            version = "#versions tr[data-version=v0002]"
            page.wait_for_function(
                f"document.querySelector(\"{version}\")?.textContent.includes('drawn by ben')", timeout=8000
            )
            page.click(f"{version} [data-action=activate]")
            page.click(f"{version} [data-action=activate]")  # the confirmation
            page.wait_for_function(
                "document.getElementById('bank-status').textContent.includes('scores with it')",
                timeout=120_000,
            )
            page.wait_for_function(
                "document.getElementById('recipe-source').textContent.includes('drawn by ben')",
                timeout=10_000,
            )
            if os.environ.get("EDGE_UPDATE_SCREENSHOTS"):
                shot = SCREENSHOT.with_name("edge-view-regions.jpg")
                page.locator("#recipe-panel").screenshot(path=str(shot), quality=70)
            browser.close()

        after = [f"q{i:02d}" for i in range(12)]
        line.trigger_parts(after)
        line.collect_until_answered(after, 60)
        verdicts = [line.verdicts[p][0] for p in after]
        assert all(v.bank_version == "v0002" for v in verdicts)
        regions = {d["region"] for v in verdicts for d in v.defects or []}
        assert regions <= {"centre"}, [(v.verdict, v.region, v.defects) for v in verdicts]
    assert "1 regions drawn by ben on edge-view" in kit.station_output, kit.station_output
