"""docs/protocol.md's field tables say what edge/protocol.py declares: the same fields per message,
and the schema version the code speaks, so the document a client is written from cannot drift."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from edge.protocol import SCHEMA_VERSION, FrameHeader, VerdictMessage

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def field_table(heading: str) -> dict[str, str]:
    """Field name → the row's last column, from the first table under the heading that starts so."""
    text = DOC.read_text()
    start = text.index(f"\n## {heading}")
    section = text[start : text.find("\n## ", start + 1)]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            rows[name] = cells[-1]
    return rows


@pytest.mark.parametrize(
    ("heading", "message"),
    [("`frame`", FrameHeader), ("`verdict.", VerdictMessage)],
    ids=["frame", "verdict"],
)
def test_the_field_tables_match_the_messages(heading, message):
    table = field_table(heading)
    assert set(table) == {f.name for f in fields(message)}
    assert table["schema"] == str(SCHEMA_VERSION)


def test_the_title_names_the_version():
    assert DOC.read_text().splitlines()[0] == f"# edge wire protocol, version {SCHEMA_VERSION}"
