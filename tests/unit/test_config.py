"""The station configuration refuses every defect with a message naming the key's path."""

from __future__ import annotations

import pytest
import yaml

from edge.config import check_station, load_config, parse_config
from edge.errors import ConfigError


@pytest.fixture
def valid(tmp_path) -> dict:
    (tmp_path / "bank.edge").write_bytes(b"placeholder")
    (tmp_path / "replay").mkdir()
    return {
        "station": "line1",
        "bank": {"path": str(tmp_path / "bank.edge")},
        "endpoints": {
            "frames": f"ipc://{tmp_path}/frames",
            "results": f"ipc://{tmp_path}/results",
            "publish": "tcp://127.0.0.1:*",
        },
        "cameras": [{"name": "cam0", "source": {"kind": "folder", "path": str(tmp_path / "replay")}}],
    }


def problems(raw: dict | str, bind: bool = False) -> str:
    text = raw if isinstance(raw, str) else yaml.safe_dump(raw)
    with pytest.raises(ConfigError) as caught:
        check_station(parse_config(text, environ={}), bind=bind)
    return str(caught.value)


def test_a_valid_configuration_loads_with_defaults(valid, tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(valid))
    config = load_config(path, environ={})
    check_station(config, bind=True)
    assert config.camera("cam0").trigger == "free_run" and config.worker.max_batch == 8
    assert config.supervisor.restart_burst == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(colour="red"), "colour: unknown key"),
        (
            lambda c: c.update(worker={"max_batch": "8"}),
            "worker.max_batch: Input should be a valid integer (got '8')",
        ),
        (lambda c: c.pop("bank"), "give bank (one product) or recipes"),
        (
            lambda c: c["cameras"][0]["source"].update(kind="gige"),
            "cameras[0].source: unknown source kind 'gige'",
        ),
        (lambda c: c["cameras"][0]["source"].update(rate=5), "cameras[0].source.rate: unknown key"),
        (lambda c: c.update(station="line 1"), "station: expected 1 to 64 letters, digits"),
        (lambda c: c["endpoints"].update(publish="5556"), "endpoints.publish: expected a ZeroMQ endpoint"),
        (lambda c: c["bank"].update(threshold=-2.0), "bank.threshold: Input should be greater than 0"),
        (
            lambda c: c["cameras"][0].update(trigger="sometimes"),
            "cameras[0].trigger: Input should be 'free_run' or 'triggered'",
        ),
        (
            lambda c: c["cameras"][0].update(trigger="triggered"),
            "cameras[0]: a triggered camera needs trigger_endpoint",
        ),
        (
            lambda c: c["cameras"].append(dict(c["cameras"][0])),
            "camera names must be unique; repeated: ['cam0']",
        ),
        (lambda c: c.update(cameras=[]), "cameras: List should have at least 1 item"),
        (
            lambda c: c.update(worker={"device": "gpu"}),
            "worker.device: expected a value of the documented form",
        ),
    ],
)
def test_schema_errors_name_the_key_and_what_was_expected(valid, change, message):
    change(valid)
    assert message in problems(valid)


def test_file_and_endpoint_errors(valid, tmp_path):
    missing = dict(valid, bank={"path": str(tmp_path / "nowhere")}, weights=str(tmp_path / "wrn.pth"))
    text = problems(missing)
    assert "bank.path: " in text and "does not exist (run edge-calibrate" in text
    assert "weights: " in text and "is not a file" in text
    valid["cameras"][0]["source"]["path"] = str(tmp_path / "no-folder")
    assert "cameras[0].source.path: " in problems(valid)


def test_endpoints_bound_twice_or_unbindable(valid, tmp_path):
    twice = dict(valid, endpoints=dict(valid["endpoints"], results=valid["endpoints"]["frames"]))
    assert "endpoints.frames, endpoints.results: the same endpoint" in problems(twice)
    unbindable = dict(valid, endpoints=dict(valid["endpoints"], frames=f"ipc://{tmp_path}/no/such/dir/f"))
    assert "endpoints.frames: ipc://" in problems(unbindable, bind=True) and "cannot be bound" in problems(
        unbindable, bind=True
    )


def test_yaml_level_errors():
    assert "line 2, column" in problems("station: a\n  bad: [")
    assert "key 'station' is given twice" in problems("station: a\nstation: b\n")
    assert "expected a mapping of settings at the top level" in problems("- a\n")


def test_yaml_tags_that_build_objects_are_refused():
    assert "not valid YAML" in problems("station: !!python/object/apply:os.system ['true']\n")


def test_environment_overrides_string_settings(valid):
    config = parse_config(yaml.safe_dump(valid), environ={"EDGE_BANK__PATH": "/srv/banks", "HOME": "/root"})
    assert config.bank.path == "/srv/banks"


@pytest.mark.parametrize("example", ["station", "usb-camera", "gige-camera", "folder-replay", "recipes"])
def test_the_example_configurations_are_valid(example):
    from pathlib import Path

    path = Path(__file__).parents[2] / "deploy" / "examples" / f"{example}.yaml"
    config = load_config(path, environ={})
    assert config.station and config.cameras


def test_the_mqtt_bridge_section_is_validated_and_its_files_checked(valid, tmp_path):
    valid["bridges"] = {"mqtt": {"broker": "mqtt.site:8883", "topic_root": "acme/+/x"}}
    assert "bridges.mqtt.topic_root: expected topic levels joined by /" in problems(valid)
    valid["bridges"]["mqtt"] = {"broker": "mqtt.site:8883", "tls_ca": str(tmp_path / "ca.pem"), "color": 1}
    assert "bridges.mqtt.color: unknown key" in problems(valid)
    valid["bridges"]["mqtt"] = {"broker": "http://mqtt.site", "topic_root": "acme/plant1"}
    assert "bridges.mqtt.broker: expected HOST or HOST:PORT" in problems(valid)
    valid["bridges"]["mqtt"] = {"broker": "mqtt.site", "tls_cert": str(tmp_path / "c.pem")}
    assert "a client certificate needs tls_cert, tls_key and tls_ca" in problems(valid)
    valid["bridges"]["mqtt"] = {"broker": "mqtt.site:8883", "tls_ca": str(tmp_path / "ca.pem")}
    assert f"bridges.mqtt.tls_ca: {tmp_path / 'ca.pem'} is not a file" in problems(valid)
    (tmp_path / "ca.pem").write_text("a CA")
    check_station(parse_config(yaml.safe_dump(valid), environ={}))


def test_check_config_names_a_missing_pool_key_file(valid, tmp_path):
    """security.workers (broker → pool workers) is checked like the other CURVE sections, so a
    missing key fails --check-config instead of the broker or a worker at start."""
    (tmp_path / "clients").mkdir()
    (tmp_path / "broker.key_secret").write_text("secret")
    valid["security"] = {
        "workers": {
            "broker": {
                "secret_key": str(tmp_path / "broker.key_secret"),
                "allowed_clients": str(tmp_path / "clients"),
            },
            "worker": {
                "secret_key": str(tmp_path / "worker.key_secret"),
                "server_key": str(tmp_path / "broker.key"),
            },
        }
    }
    message = problems(valid)
    assert (
        f"security.workers.worker.secret_key: {tmp_path / 'worker.key_secret'} is not a key file" in message
    )
    assert f"security.workers.worker.server_key: {tmp_path / 'broker.key'} is not a key file" in message
    assert "security.workers.broker" not in message


def test_the_opcua_bridge_section_names_its_missing_files(valid, tmp_path):
    from edge.bridges.base import link_from_config

    valid["endpoints"]["latest"] = "tcp://*:5557"
    opcua = {"certificate": str(tmp_path / "s.der"), "private_key": str(tmp_path / "s.pem")}
    valid["bridges"] = {
        "opcua": {**opcua, "trust_dir": str(tmp_path / "trusted"), "endpoint_url": "http://x"}
    }
    assert "bridges.opcua.endpoint_url: expected an OPC UA endpoint" in problems(valid)
    del valid["bridges"]["opcua"]["endpoint_url"]
    message = problems(valid)
    for name, path in opcua.items():
        assert f"bridges.opcua.{name}: {path} is not a file" in message
    assert "bridges.opcua.trust_dir" in message
    (tmp_path / "s.der").write_bytes(b"cert")
    (tmp_path / "s.pem").write_bytes(b"key")
    (tmp_path / "trusted").mkdir()
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(valid))
    link, section = link_from_config(path, "opcua")
    assert link.station == "line1" and link.cameras == ("cam0",) and section.metrics_port is None
    assert link.query_endpoint == "tcp://127.0.0.1:5557" and section.endpoint_url.endswith(":4840/edge/")


def test_check_config_walks_the_schema_for_every_file_a_setting_names(valid, tmp_path):
    """Every CURVE section, and each file and folder setting, is found by walking the schema:
    none is listed by hand, so a new section cannot be skipped."""
    server = {"secret_key": str(tmp_path / "s.key_secret"), "allowed_clients": str(tmp_path / "clients")}
    client = {"secret_key": str(tmp_path / "c.key_secret"), "server_key": str(tmp_path / "s.key")}
    valid["security"] = {
        "publisher": server,
        "frames": {"worker": server, "capture": client},
        "workers": {"broker": server, "worker": client},
    }
    valid["weights"] = str(tmp_path / "wrn50.pth")
    valid["cameras"][0]["source"]["path"] = str(tmp_path / "gone")
    message = problems(valid)
    sections = ["security.publisher", "security.frames.worker", "security.workers.broker"]
    for section in sections:
        assert f"{section}.secret_key: " in message and f"{section}.allowed_clients: " in message
    for section in ["security.frames.capture", "security.workers.worker"]:
        assert f"{section}.secret_key: " in message and f"{section}.server_key: " in message
    assert "weights: " in message and "cameras[0].source.path: " in message
    assert message.startswith("12 problem(s)")  # 10 keys and folders, the weights, the folder source
