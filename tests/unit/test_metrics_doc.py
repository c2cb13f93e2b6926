"""docs/operations.md lists every metric family the code exports, and nothing it does not: a family
renamed or added in the code without the table, or a row left for one that is gone, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.light  # runs on the light install too (pip install edge)

ROOT = Path(__file__).resolve().parents[2]
BRIDGES = ("mqtt", "opcua", "modbus")


def exported() -> set[str]:
    """Every family name the code writes: literal names, and the bridge base's per-bridge ones."""
    names = set()
    for path in (ROOT / "edge").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'"(edge_[a-z_]+)",\s', text)) - {"edge_version"}
        for suffix in re.findall(r'f"\{prefix\}_([a-z_]+)"', text):
            names |= {f"edge_{bridge}_{suffix}" for bridge in BRIDGES}
    return names


def documented() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("## Metrics") : text.index("\n## ", text.index("## Metrics") + 1)]
    names = set()
    for family in re.findall(r"^\| `(edge_[a-z_<>]+)`", table, re.MULTILINE):
        names |= {family.replace("<bridge>", b) for b in BRIDGES} if "<bridge>" in family else {family}
    return names


def test_every_exported_metric_family_is_documented_and_no_other():
    code, doc = exported(), documented()
    assert len(code) > 30
    assert code - doc == set(), f"exported, not in docs/operations.md: {sorted(code - doc)}"
    assert doc - code == set(), f"in docs/operations.md, not exported: {sorted(doc - code)}"
