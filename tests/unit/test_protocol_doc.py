"""docs/protocol.md says what edge/protocol.py declares: each message's fields, each field's type as
its rule writes it, and the schema version the code speaks, so the document a client is written from
cannot drift."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from edge.protocol import (
    SCHEMA_VERSION,
    BankReply,
    BrokerOrder,
    CameraState,
    Control,
    ErrorReply,
    FrameHeader,
    Heartbeat,
    LatestReply,
    MaskHeader,
    PoolStatusReply,
    PoolWorkerStatus,
    Query,
    ReplayGap,
    ReplayReply,
    Trigger,
    VerdictMessage,
    WorkerReady,
    declared,
)

pytestmark = pytest.mark.light  # runs on the light install too (pip install edge)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {heading}")
    return text[start : text.find("\n## ", start + 1)]


def field_table(heading: str) -> dict[str, tuple[str, str]]:
    """Field name → (type, meaning) cells, from the table under the heading that starts so."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section(heading).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[name] = (cells[1], cells[2])
    return rows


@pytest.mark.parametrize(
    ("heading", "message"),
    [
        ("`frame`", FrameHeader),
        ("`verdict.", VerdictMessage),
        ("Worker pool", WorkerReady),
        ("`camera`", CameraState),
        ("Reply `ok: false`", ErrorReply),
        ("Reply `bank`", BankReply),
        ("Reply `pool status`", PoolStatusReply),
        ("Reply `latest`", LatestReply),
        ("Reply `replay page`", ReplayReply),
    ],
    ids=["frame", "verdict", "ready", "camera", "error", "bank", "pool-status", "latest", "replay"],
)
def test_the_field_tables_match_the_messages(heading, message):
    table = field_table(heading)
    assert set(table) - {"schema"} == {f.name for f in fields(message)} - {"schema"}
    rules, _ = declared(message)
    for name, rule in rules.items():
        assert table[name][0] == rule.doc, f"{message.__name__}.{name}"
    if "schema" in table:
        assert table["schema"] == ("int", str(SCHEMA_VERSION))


@pytest.mark.parametrize(
    ("heading", "message"),
    [
        ("`mask.", MaskHeader),
        ("`mask.", Heartbeat),
        ("`trigger`", Trigger),
        ("Worker control", Control),
        ("Latest verdict and replay", Query),
        ("Reply `pool status`", PoolWorkerStatus),
        ("Reply `replay page`", ReplayGap),
        ("Worker pool", BrokerOrder),
    ],
    ids=["mask", "heartbeat", "trigger", "control", "query", "pool-worker", "gap", "broker-order"],
)
def test_the_messages_described_in_prose_name_their_fields(heading, message):
    text = section(heading)
    for name in declared(message)[0]:
        assert f'"{name}"' in text, f"{message.__name__}.{name} is not in the section {heading!r}"


def test_the_title_names_the_version():
    assert DOC.read_text().splitlines()[0] == f"# edge wire protocol, version {SCHEMA_VERSION}"
