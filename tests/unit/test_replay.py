"""The publisher's replay store: pages bounded in bytes, in order across publisher restarts, and
exact ranges for what it no longer holds."""

from __future__ import annotations

import json

import pytest

from edge.pipeline.replay import Missing, ReplayStore, missing_total

pytestmark = pytest.mark.unit


def body(epoch: int, seq: int, padding: int = 400) -> dict:
    return {"camera": "cam0", "epoch": epoch, "seq": seq, "frame_id": f"{epoch}-{seq}", "pad": "x" * padding}


def fill(store: ReplayStore, epoch: int, seqs: range, at: float | None = None) -> None:
    for seq in seqs:
        store.add("cam0", epoch, seq, body(epoch, seq))
    if at is not None:
        store.db.execute("UPDATE verdicts SET published = ? WHERE epoch = ?", (at, epoch))


def replay_all(store: ReplayStore, epoch: int, after: int, max_bytes: int) -> tuple[list, list, int]:
    verdicts, missing, pages = [], [], 0
    position = (epoch, after)
    while True:
        page = store.page("cam0", *position, max_bytes)
        pages += 1
        assert len(json.dumps(page.verdicts, separators=(",", ":"))) <= max_bytes
        verdicts += page.verdicts
        missing += page.missing
        if not page.more:
            return verdicts, missing, pages
        position = (page.verdicts[-1]["epoch"], page.verdicts[-1]["seq"])


def test_a_long_outage_is_replayed_whole_in_bounded_pages(tmp_path):
    store = ReplayStore(tmp_path / "replay.sqlite", keep_s=3600)
    fill(store, 100, range(1, 3001))
    verdicts, missing, pages = replay_all(store, 100, 20, max_bytes=56 * 1024)
    assert [v["seq"] for v in verdicts] == list(range(21, 3001))
    assert missing == [] and pages > 10


def test_replay_crosses_publisher_restarts_and_survives_a_reopen(tmp_path):
    path = tmp_path / "replay.sqlite"
    store = ReplayStore(path, keep_s=3600)
    fill(store, 100, range(1, 51))
    store.close()
    store = ReplayStore(path, keep_s=3600)  # a restarted publisher
    fill(store, 200, range(1, 31))
    verdicts, missing, _ = replay_all(store, 100, 40, max_bytes=8 * 1024)
    assert [(v["epoch"], v["seq"]) for v in verdicts] == [(100, s) for s in range(41, 51)] + [
        (200, s) for s in range(1, 31)
    ]
    assert missing == [] and store.latest("cam0")["frame_id"] == "200-30"


def test_what_retention_dropped_is_named_exactly(tmp_path):
    store = ReplayStore(tmp_path / "replay.sqlite", keep_s=60)
    fill(store, 100, range(1, 101), at=1000.0)  # an old publisher's verdicts, all too old
    fill(store, 200, range(1, 11), at=1950.0)  # a newer one's: half too old
    store.db.execute("UPDATE verdicts SET published = 2001 WHERE epoch = 200 AND seq > 5")
    store.next_prune = 0
    assert store.prune(now=2020.0) == 105
    verdicts, missing, _ = replay_all(store, 100, 90, max_bytes=56 * 1024)
    assert [v["seq"] for v in verdicts] == [6, 7, 8, 9, 10]
    assert missing == [Missing(100, 91, 100), Missing(200, 1, 5)] and missing_total(missing) == 15
    page = store.page("cam0", 0, 0, 56 * 1024)  # epoch 0: everything kept, nothing counted lost
    assert len(page.verdicts) == 5 and page.missing == [] and page.known
    assert not store.page("cam0", 50, 3, 56 * 1024).known  # an epoch never seen here


def test_an_empty_store_answers_an_empty_page():
    store = ReplayStore(None, keep_s=10)
    page = store.page("cam0", 123, 4, 1024)
    assert page.verdicts == [] and not page.more and not page.known and store.latest("cam0") is None
