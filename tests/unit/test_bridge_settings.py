"""Each bridge's section of the station file is the only declaration of its knobs: its command-line
options are derived from it and a value is refused by the same rule, whether it comes from an option
or from the station file. The process table edge-run, --check-config and install.sh read lists the
configured bridges."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from edge.bridges.base import _options, link_from_config, section_from_options
from edge.bridges.modbus import ModbusBridge
from edge.bridges.mqtt import MqttBridge
from edge.bridges.opcua import OpcUaBridge
from edge.config import MqttBridgeConfig, parse_config
from edge.errors import ConfigError, UsageError
from edge.options import _plain, option_of
from edge.processes import bridges_left_out, station_processes, units

BRIDGES = (MqttBridge, OpcUaBridge, ModbusBridge)
STATION = {
    "station": "line1",
    "bank": {"path": "/nonexistent"},
    "endpoints": {"frames": "ipc:///tmp/f", "results": "ipc:///tmp/r", "publish": "tcp://*:5556",
                  "latest": "tcp://*:5557"},
    "cameras": [{"name": "cam0", "source": {"kind": "synthetic"}}],
}  # fmt: skip


def leaves(section: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Every field of a section and its sub-sections, by dotted path, with its FieldInfo."""
    found: dict[str, object] = {}
    for name, info in section.model_fields.items():
        kind, _, _ = _plain(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found |= leaves(kind, f"{prefix}{name}.")
        else:
            found[prefix + name] = info
    return found


@pytest.mark.parametrize("bridge", BRIDGES, ids=[b.name for b in BRIDGES])
def test_every_key_of_a_bridge_section_is_an_option_and_nothing_else_is(bridge):
    parser, options = _options(bridge, "doc")
    actions = {action.dest: action for action in parser._actions}
    keys = leaves(bridge.section_type)
    assert set(options) == set(keys)
    for key, info in keys.items():
        action = actions[key]
        assert option_of(key.split(".")[-1], info) in action.option_strings
        assert action.default is None and action.help  # unset: the section's default stands
    station_side = {"help", "station_endpoint", "config", "station", "query", "control"}
    assert set(actions) - set(options) == station_side


@pytest.mark.parametrize(
    ("option", "key", "value", "says"),
    [
        ("--topic-root", "topic_root", "a/+/b", "expected topic levels joined by /"),
        ("--broker", "broker", "host:port", "expected HOST or HOST:PORT"),
        ("--buffer", "buffer", 0, "greater than or equal to 1"),
        ("--alive-timeout", "alive_timeout_s", -1.0, "greater than 0"),
    ],
)
def test_an_option_and_a_station_file_key_are_refused_by_one_rule(option, key, value, says):
    parser, options = _options(MqttBridge, "doc")
    args = parser.parse_args(["ipc:///tmp/x", "--station", "s", "--broker", "h", option, str(value)])
    with pytest.raises(UsageError) as from_option:
        section_from_options(args, MqttBridgeConfig, options)
    assert str(from_option.value).startswith(f"{option}: ") and says in str(from_option.value)
    station = {**STATION, "bridges": {"mqtt": {"broker": "h", key: value}}}
    with pytest.raises(ConfigError) as from_file:
        parse_config(yaml.safe_dump(station))
    assert f"bridges.mqtt.{key}: " in str(from_file.value) and says in str(from_file.value)


def test_options_give_the_section_a_station_file_would(tmp_path):
    parser, options = _options(MqttBridge, "doc")
    given = [
        "--broker",
        "mqtt.site",
        "--topic-root",
        "acme/p1",
        "--masks",
        "--camera",
        "cam0",
        "--buffer",
        "5",
    ]
    args = parser.parse_args(["ipc:///x", "--station", "s", *given])
    section = section_from_options(args, MqttBridgeConfig, options)
    path = tmp_path / "station.yaml"
    mqtt = {"broker": "mqtt.site", "topic_root": "acme/p1", "masks": True, "cameras": ["cam0"], "buffer": 5}
    path.write_text(yaml.safe_dump({**STATION, "bridges": {"mqtt": mqtt}}))
    link, from_file = link_from_config(path, "mqtt")
    assert section == from_file
    assert link.station_endpoint == "tcp://127.0.0.1:5556" and link.query_endpoint == "tcp://127.0.0.1:5557"
    key = tmp_path / "c.key_secret"
    key.write_text("x")
    with pytest.raises(UsageError, match="--server-key: required key is missing"):  # half a CURVE pair
        args = parser.parse_args(["ipc:///x", "--station", "s", "--broker", "h", "--client-key", str(key)])
        section_from_options(args, MqttBridgeConfig, options)


def test_the_process_table_runs_each_configured_bridge_or_says_why_not(monkeypatch):
    raw = {**STATION, "bridges": {"mqtt": {"broker": "h"}, "modbus": {"plc": "10.0.0.5:502"}}}
    config = parse_config(yaml.safe_dump(raw))
    names = [process.name for process in station_processes(config)]
    assert names == ["publisher", "worker", "capture:cam0", "bridge:mqtt", "bridge:modbus"]
    assert units(config)[-2:] == ["edge-mqtt-bridge.service", "edge-modbus-bridge.service"]
    assert not [p for p in station_processes(config) if p.rank == "bridge" and p.essential]
    monkeypatch.setattr(MqttBridgeConfig, "needs", ("no_such_client_library", "mqtt"))
    assert bridges_left_out(config) == {
        "mqtt": "no_such_client_library is not installed (pip install 'edge[mqtt]')"
    }
    assert "bridge:mqtt" not in [process.name for process in station_processes(config)]
    assert station_processes(config)[-1].argv(Path("/s.yaml"))[-3:] == [
        "edge.bridges.modbus",
        "--config",
        "/s.yaml",
    ]


def test_help_shows_each_default_once_and_marks_required_keys():
    parser, _ = _options(MqttBridge, "doc")
    text = parser.format_help()
    assert "(required)" in text and "PydanticUndefined" not in text and "(default edge)" in text
