"""The layers, checked in milliseconds from the source (every import, at module level or inside a
function): data flows capture → worker → publisher, the engine knows nothing of sockets or
configuration, and what a light install runs imports no ML stack."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.light  # runs on the light install too (pip install edge)

PACKAGE = Path(__file__).resolve().parents[2] / "edge"
HEAVY = ("torch", "torchvision", "cv2", "faiss", "openvino", "onnxruntime", "onnx")
WIRE = ("edge.protocol", "edge.sockets", "edge.security", "edge.client", "edge.tail", "edge.keys")
ENGINE_MUST_NOT = ("edge.pipeline", "edge.services", "edge.config", "edge.protocol", "edge.eval",
                   "edge.calibration", "edge.bridges", "edge.view", "zmq")  # fmt: skip
RULES = [  # (modules the rule is about, imports they must not make, why)
    (("edge.engine",), ENGINE_MUST_NOT, "the engine is a library"),
    (WIRE, (*HEAVY, "pydantic", "yaml"), "the wire modules are the light install"),
    (("edge.pipeline",), ("edge.config", "edge.eval", "edge.services"), "pipeline objects read no settings"),
    (("edge.view",), ("edge.engine", *HEAVY), "the operator's page runs without torch"),
    (("edge.bridges",), ("edge.engine", "edge.pipeline", "edge.services", *HEAVY),
     "bridges are light installs and stand on no station process"),
    (("edge.config", "edge.processes", "edge.lifecycle", "edge.pixel_formats", "edge.engine.config",
      "edge.engine.input_geometry"), ("edge.pipeline", "edge.engine.geometry", *HEAVY),
     "settings load without the station's stack"),
    (("edge.calibration",), ("edge.eval",), "calibration runs on a station, without the evaluation kit"),
]  # fmt: skip
# validating a bank on an MVTec-format folder is an evaluation: it reads the evaluation kit's layout
ALLOWED = {
    ("edge.calibration.validate", "edge.eval.mvtec"),
    ("edge.calibration.validate", "edge.eval.metrics"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize(("modules", "forbidden", "why"), RULES, ids=[rule[2] for rule in RULES])
def test_no_import_crosses_a_layer(graph, modules, forbidden, why):
    crossings = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if within(module, modules)
        for target in targets
        if within(target, forbidden)
        and not any(within(module, (m,)) and within(target, (t,)) for m, t in ALLOWED)
    )
    assert not crossings, f"{why}: " + "; ".join(crossings)


def test_no_import_cycle(graph):
    """No edge module imports, directly or through others, a module that imports it back."""
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    cycles = []
    for start in edges:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for target in edges[node]:
                if target == start:
                    cycles.append(" → ".join([*path, start]))
                elif target not in seen and not target.startswith(start + "."):
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not cycles, cycles[:5]
