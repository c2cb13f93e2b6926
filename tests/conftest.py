"""Shared fixtures (a small synthetic data set, a model fitted on it, the real-data location) and
the tiers: each test is marked by its folder (unit, station, data, install), so `pytest tests/unit`
or `pytest -m unit` runs the one-minute tier and `pytest` all of them. The fixtures import the
engine only when a test asks for one: the light install (`pip install edge`, no torch) collects
and runs `pytest tests/unit -m light`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from edge.engine.model import PatchCore

DATA_ENV = "EDGE_DATA_ROOT"
TIERS = ("unit", "station", "data", "install")
LIGHT_MARK = "pytestmark = pytest.mark.light"
# the light install (`pip install edge`) has neither; only modules marked light are collected there
STATION_STACK = ("torch", "pydantic")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without the station's stack, a test module not marked light is not even imported."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if all(importlib.util.find_spec(module) for module in STATION_STACK):
        return None
    return LIGHT_MARK not in collection_path.read_text()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.path)).parent.name
        assert tier in TIERS, f"{item.nodeid}: tests live in one of the tier folders {TIERS}"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge.eval.synthetic import SynthSpec, generate

    root = tmp_path_factory.mktemp("synth")
    generate(
        root, "part", SynthSpec(size=160, train=12, test_good=4, test_per_defect=3, seed=1), progress=False
    )
    return root


@pytest.fixture(scope="session")
def synthetic_category(synthetic_root: Path):
    from edge.eval.mvtec import load_category

    return load_category(synthetic_root, "part")


@pytest.fixture(scope="session")
def fitted_model(synthetic_category) -> PatchCore:
    from edge.engine.config import EngineConfig
    from edge.engine.model import PatchCore
    from edge.imageio import read_image

    images = [read_image(p) for p in synthetic_category.train]
    return PatchCore.fit(images, EngineConfig(coreset_fraction=0.1))


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(
            f"{DATA_ENV} is not set: real MVTec AD data unavailable (.ci/run sets it to ../shared/data)"
        )
    root = Path(value) / "mvtec"
    if not root.is_dir():
        pytest.skip(f"{root} does not exist: real MVTec AD data unavailable")
    return root


@pytest.fixture(scope="session")
def kolektor_root() -> Path:
    value = os.environ.get(DATA_ENV)
    root = Path(value or ".") / "kolektorsdd"
    if not value or not (root / "commutator").is_dir():
        pytest.skip(f"KolektorSDD is not under ${DATA_ENV}/kolektorsdd (.ci/run sets it to ../shared/data)")
    return root


@pytest.fixture(scope="session")
def bank_store(tmp_path_factory: pytest.TempPathFactory, fitted_model: PatchCore, synthetic_category):
    """A bank store whose active version is the fitted synthetic model with a threshold above its
    held-out good scores (a copy: the shared model is left uncalibrated)."""
    from edge.bankstore import BankStore
    from edge.engine.artifact import load_model, save_model
    from edge.imageio import read_image

    root = tmp_path_factory.mktemp("banks")
    copy = load_model(save_model(fitted_model, root / "fitted.edge"))
    good = [read_image(s.path) for s in synthetic_category.test if s.label == 0]
    copy.calibrate({"threshold": 1.02 * max(r.score for r in copy.score(good)), "version": "test"})
    store = BankStore(root / "store")
    store.publish(copy)
    return store
