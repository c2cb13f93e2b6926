"""Each engine setting is declared once (EngineConfig's fields); the CLIs, the station file's schema,
the runtime settings and the backbone names are held to that declaration here."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from edge.calibration import cli as calibrate_cli
from edge.config import (
    BACKBONE_PATTERN,
    RECIPE_ENGINE_SETTINGS,
    WORKER_ENGINE_SETTINGS,
    CalibrationConfig,
    WorkerConfig,
)
from edge.engine import backbones
from edge.engine.config import BACKBONES, DEFAULTS, RUNTIME_SETTINGS, SETTINGS, EngineConfig
from edge.errors import UsageError
from edge.eval import cli as eval_cli
from edge.options import _plain, engine_names, flag_of


def options_of(parse_args) -> dict[str, argparse.Action]:
    """The actions of a CLI's parser, by destination."""
    captured = {}

    def keep(parser, *_):
        captured.update({action.dest: action for action in parser._actions})
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = keep
    try:
        with pytest.raises(SystemExit):
            parse_args(["root"])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured


def test_edge_eval_offers_every_engine_setting_as_declared():
    actions = options_of(eval_cli.parse_args)
    for name in engine_names():
        action, meaning, default = actions[name], SETTINGS[name], getattr(DEFAULTS, name)
        assert flag_of(name) in action.option_strings
        assert action.help and meaning.help.replace("%", "%%") in action.help
        if isinstance(default, bool):
            assert action.default is default
        else:
            assert action.default == default
            assert tuple(action.choices or ()) == meaning.choices


def test_edge_calibrate_offers_every_recipe_key_and_the_station_file_keeps_the_engine_defaults():
    actions = options_of(calibrate_cli.parse_args)
    for name, info in CalibrationConfig.model_fields.items():
        action = actions[name]
        assert flag_of(name) in action.option_strings and action.default is None and action.help
        _, choices, _ = _plain(info.annotation)
        assert tuple(action.choices or ()) == choices
    for name in RECIPE_ENGINE_SETTINGS:
        assert CalibrationConfig.model_fields[name].default == getattr(DEFAULTS, name)
        assert _plain(CalibrationConfig.model_fields[name].annotation)[1] == SETTINGS[name].accepted
    assert set(RECIPE_ENGINE_SETTINGS) >= {"backbone", "coreset_fraction", "seed", "image_score"}
    assert CalibrationConfig().geometry == DEFAULTS.geometry.mode


def test_the_worker_section_offers_runtime_settings_only_with_the_engine_defaults():
    assert set(WORKER_ENGINE_SETTINGS) >= {"device", "search", "search_precision", "extractor"}
    for name in WORKER_ENGINE_SETTINGS:
        assert SETTINGS[name].runtime
        assert WorkerConfig.model_fields[name].default == getattr(DEFAULTS, name)
        if SETTINGS[name].choices:
            assert _plain(WorkerConfig.model_fields[name].annotation)[1] == SETTINGS[name].accepted
    assert set(RUNTIME_SETTINGS) == {f.name for f in fields(EngineConfig) if f.metadata["setting"].runtime}


def test_every_backbone_edge_builds_is_accepted_by_name_and_in_the_station_file():
    import re

    assert tuple(backbones._BUILDERS) == BACKBONES
    for name in (*BACKBONES, f"{BACKBONES[0]}+{BACKBONES[-1]}"):
        assert re.match(BACKBONE_PATTERN, name) and EngineConfig(backbone=name).backbone == name
    for bad in ("resnet18", f"{BACKBONES[0]}+{BACKBONES[0]}"):
        with pytest.raises(UsageError, match="unknown backbone"):
            EngineConfig(backbone=bad)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("coreset_fraction", 0.0, "greater than 0"),
        ("coreset_fraction", 1.5, "at most 1"),
        ("projection_dim", 0, "at least 1"),
        ("reweight_neighbours", 1, "at least 2"),
        ("batch_size", 0, "at least 1"),
        ("search", "nearest", "choose one of auto, projected, exact, faiss"),
        ("extractor", "tflite", "choose one of"),
    ],
)
def test_a_value_outside_the_declaration_is_a_usage_error_naming_the_setting(name, value, says):
    with pytest.raises(UsageError, match=f"{name.replace('_', ' ')}: .*{says}"):
        EngineConfig(**{name: value})


def test_old_names_still_read_as_their_new_ones():
    assert EngineConfig(search="torch").search == "exact"
    assert "torch" in _plain(WorkerConfig.model_fields["search"].annotation)[1]  # old station files


# The pipeline reads no configuration (tests/unit/test_layers.py): its objects take dataclass
# settings, built by the services from the station file's sections. Where a twin repeats a key, its
# default must be the section's, or a library user and a station would run different stations.
TWINS = {  # twin: (its section, keys whose defaults differ on purpose, and why)
    "edge.pipeline.capture.CaptureSettings": ("CameraConfig", {}),
    "edge.pipeline.worker.WorkerSettings": ("WorkerConfig", {}),
    "edge.pipeline.broker.BrokerSettings": ("BrokerConfig", {}),
    "edge.pipeline.gige.GigESettings": ("AravisSourceConfig", {}),
    "edge.pipeline.sources.OpenCVSettings": ("OpenCVSourceConfig", {}),
    "edge.pipeline.publisher.PublisherSettings": (
        "PublisherConfig",
        {"startup_hold_s": "a publisher in a library or test sends at once; a station's holds"},
    ),
}


@pytest.mark.parametrize("twin", TWINS)
def test_each_pipeline_settings_twin_keeps_its_sections_defaults(twin):
    import importlib

    import edge.config

    module, name = twin.rsplit(".", 1)
    settings = getattr(importlib.import_module(module), name)
    section_name, differing = TWINS[twin]
    section = getattr(edge.config, section_name)
    shared = [field for field in fields(settings) if field.name in section.model_fields]
    assert shared, f"{name} shares no key with {section_name}"
    for field in shared:
        if field.name not in differing:
            assert field.default == section.model_fields[field.name].default, f"{name}.{field.name}"


def test_the_worker_batch_is_one_knob(monkeypatch):
    """worker.max_batch is the micro-batch and the extractor's batch (engine batch_size): the
    worker loads its bank with it."""
    import edge.bankstore
    import edge.engine.artifact
    from edge.config import parse_config
    from edge.services.worker import load_station_recipes

    asked: dict = {}

    class Loaded(Exception):
        pass

    def load_model(path, weights, **runtime):
        asked.update(runtime)
        raise Loaded

    monkeypatch.setattr(edge.bankstore, "resolve_bank", lambda path: type("Ref", (), {"path": path})())
    monkeypatch.setattr(edge.engine.artifact, "load_model", load_model)
    config = parse_config(
        "station: s\nbank: {path: /banks}\nworker: {max_batch: 3}\n"
        "endpoints: {frames: 'ipc:///tmp/f', results: 'ipc:///tmp/r', publish: 'ipc:///tmp/p'}\n"
        "cameras: [{name: c, source: {kind: synthetic}}]\n"
    )
    with pytest.raises(Loaded):
        load_station_recipes(config)
    assert asked["batch_size"] == 3
    assert WorkerConfig().max_batch == DEFAULTS.batch_size
