"""edge-mqtt-bridge against a real broker (Debian's mosquitto, started here on loopback) and a
paho-mqtt subscriber as a historian would write one: every verdict arrives across a broker outage,
none twice, the retained status is right, the last will fires when the bridge is killed, and
hostile input or a full buffer costs a log line, not the bridge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq
from bridge_kit import Station, free_port
from station_kit import start_station, station_config, stop_station, wait_until

from edge.protocol import Verdict, VerdictMessage

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed (pip install 'edge[mqtt]')")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto not installed (apt-get install mosquitto; .ci/run does)"
)
ROOT = "acme/plant1"


class Broker:
    """mosquitto on loopback with persistence, so sessions and queued messages survive a restart."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        # as root, mosquitto switches to its own user unless told otherwise, and could not write here
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nlog_dest none\n{user}"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stderr=subprocess.DEVNULL)

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # mosquitto saves its sessions on SIGTERM
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


class Historian:
    """A paho-mqtt subscriber with a persistent session and QoS 1, as a plant's historian runs."""

    def __init__(self, port: int, client_id: str = "historian") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{ROOT}/#", qos=1)
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def payloads(self, suffix: str, retained: bool | None = None) -> list[bytes]:
        with self.lock:
            return [p for t, p, r in self.messages if t.endswith(suffix) and retained in (None, r)]

    def verdict_frames(self) -> list[str]:
        return [json.loads(p)["frame_id"] for p in self.payloads("/verdict")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_bridge(pub: str, query: str, port: int, folder: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "edge.bridges.mqtt", pub, "--station", "line1", "--query", query,
        "--broker", f"127.0.0.1:{port}", "--topic-root", ROOT, "--alive-timeout", "1",
        "--state", str(folder / "positions.json"), *extra,
    ]  # fmt: skip
    log = (folder / "bridge.log").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def retained(port: int, topic: str) -> bytes | None:
    """What a new subscriber gets as the retained message of `topic`."""
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(lambda: got, 5, f"the retained {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1]


def test_every_verdict_arrives_once_across_a_broker_outage(tmp_path, broker):
    station = Station(tmp_path)
    historian = Historian(broker.port)
    bridge = start_bridge(station.pub, station.query, broker.port, tmp_path)
    try:
        wait_until(lambda: historian.payloads("/status"), 15, "the bridge's first status")
        sent = []

        def send(indices: range) -> None:
            for index in indices:
                sent.append(station.send(index))
                time.sleep(0.05)  # 20 verdicts per second

        send(range(80))
        broker.stop()
        outage = time.monotonic()
        send(range(80, 120))  # 2 s of verdicts while the broker is away
        time.sleep(max(0.0, 10 - (time.monotonic() - outage)))
        broker.start()
        send(range(120, 200))
        wait_until(lambda: len(set(historian.verdict_frames())) == len(sent), 60, "every verdict")
        time.sleep(1)  # anything sent twice would have arrived by now
        frames = historian.verdict_frames()
        assert sorted(frames) == sorted(sent) and len(frames) == len(sent), "lost or repeated verdicts"
        first = json.loads(historian.payloads("/verdict")[0])
        assert first["verdict"] == "NOK" and first["part_id"] == "P0" and first["threshold"] == 1.0
        status = json.loads(retained(broker.port, f"{ROOT}/line1/status"))
        assert status["station_alive"] is True and status["lost_verdicts"] == 0 and "bridge" not in status
        assert retained(broker.port, f"{ROOT}/line1/bridge") == b"online"
        last = json.loads(retained(broker.port, f"{ROOT}/line1/cam1/last"))
        assert last["frame_id"] == sent[-1]
        bridge.send_signal(signal.SIGKILL)  # gone without a goodbye: the broker sends its last will
        bridge.wait(10)
        wait_until(lambda: retained(broker.port, f"{ROOT}/line1/bridge") == b"offline", 30, "the last will")
    finally:
        if bridge.poll() is None:
            bridge.kill()
        historian.close()
        station.close()


def test_a_restarted_bridge_resumes_where_it_stopped(tmp_path, broker):
    """Verdicts published while the bridge is down are fetched through the replay query."""
    station = Station(tmp_path)
    historian = Historian(broker.port)
    bridge = start_bridge(station.pub, station.query, broker.port, tmp_path)
    try:
        wait_until(lambda: historian.payloads("/status"), 15, "the bridge's first status")
        sent = [station.send(i) for i in range(20)]
        wait_until(lambda: len(historian.verdict_frames()) == 20, 20, "the first 20 verdicts")
        bridge.terminate()
        assert bridge.wait(15) == 0
        sent += [station.send(i) for i in range(20, 40)]  # nobody is listening
        time.sleep(0.5)
        bridge = start_bridge(station.pub, station.query, broker.port, tmp_path)
        sent += [station.send(i) for i in range(40, 45)]
        wait_until(lambda: len(set(historian.verdict_frames())) == 45, 30, "the verdicts missed while down")
        assert sorted(historian.verdict_frames()) == sorted(sent)
    finally:
        bridge.kill()
        historian.close()
        station.close()


def test_hostile_station_unreachable_broker_and_a_full_buffer(tmp_path):
    """Garbage on the station's socket, no broker at start and a buffer too small for the outage:
    each is a clear log line, and the bridge delivers what it kept once the broker appears."""
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/pub"
    pub.bind(endpoint)
    broker = Broker(tmp_path)  # not started yet
    metrics_port = free_port()
    bridge = start_bridge(
        endpoint,
        f"ipc://{tmp_path}/none",
        broker.port,
        tmp_path,
        "--buffer",
        "10",
        "--metrics-port",
        str(metrics_port),
    )
    log = tmp_path / "bridge.log"

    def counted(name: str) -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        except OSError:
            return 0.0
        lines = [line for line in text.decode().splitlines() if line.startswith(name)]
        return float(lines[0].split()[-1]) if lines else 0.0

    def probe() -> bool:  # garbage until the bridge counts one: then its subscription is in place
        pub.send_multipart([b"verdict.line1.cam1.", b"{probe"])
        return counted("edge_mqtt_malformed_total") >= 1

    try:
        wait_until(probe, 30, "the bridge to subscribe to the station", every_s=0.1)
        for garbage in (
            [b"verdict.line1.cam1.", b"{not json"],
            [b"verdict.line1.cam1."],
            [b"verdict.line1.x", b"1"],
        ):
            pub.send_multipart(garbage)
        for index in range(30):
            message = VerdictMessage(
                "line1", "cam1", f"f{index}", Verdict.OK, "t", index, seq=index + 1, epoch=1
            )
            pub.send_multipart([b"verdict.line1.cam1.", json.dumps(_body(message)).encode()])
            time.sleep(0.02)
        wait_until(lambda: b"buffer full" in log.read_bytes(), 15, "the buffer-full log line")
        assert bridge.poll() is None, "the bridge died"
        assert counted("edge_mqtt_dropped_total") >= 20
        assert counted("edge_mqtt_malformed_total") >= 3  # the probes' and the three kinds of garbage
        broker.start()  # the newest kept verdicts go out once the broker appears
        newest = lambda: json.loads(retained(broker.port, f"{ROOT}/line1/cam1/last"))["frame_id"]  # noqa: E731
        wait_until(lambda: newest() == "f29", 30, "the newest verdict")
        assert bridge.poll() is None
    finally:
        bridge.kill()
        broker.stop()
        pub.close()
        context.destroy(linger=0)


def _body(message: VerdictMessage) -> dict:
    from edge.protocol import verdict_body

    return verdict_body(message)


def test_usage_mistakes_exit_2_without_a_traceback(tmp_path):
    for extra in (["--topic-root", "a/+/b"], ["--broker", "host:port"], ["--tls-cert", str(tmp_path / "x")]):
        command = [
            sys.executable,
            "-m",
            "edge.bridges.mqtt",
            "ipc:///tmp/x",
            "--station",
            "s",
            "--broker",
            "h",
        ]
        result = subprocess.run(command + extra, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


def test_masks_go_out_as_png_when_asked(tmp_path, broker):
    """--masks: a NOK verdict's mask arrives as PNG bytes under .../mask/<frame id, escaped>."""
    import cv2
    import numpy as np

    from edge.protocol import encode_result

    station = Station(tmp_path)
    historian = Historian(broker.port)
    bridge = start_bridge(station.pub, station.query, broker.port, tmp_path, "--masks")
    try:
        wait_until(lambda: historian.payloads("/status"), 15, "the bridge's first status")
        mask = np.zeros((32, 48), np.uint8)
        mask[4:12, 6:20] = 255
        png = cv2.imencode(".png", mask)[1].tobytes()
        message = VerdictMessage("line1", "cam1", "lot/7+a#1", Verdict.NOK, "t", 1, score=2.0, threshold=1.0)
        station.worker.send_multipart(encode_result(message, png))
        wait_until(lambda: historian.payloads("/mask/lot%2F7%2Ba%231"), 15, "the mask")
        received = historian.payloads("/mask/lot%2F7%2Ba%231")[0]
        assert np.array_equal(cv2.imdecode(np.frombuffer(received, np.uint8), cv2.IMREAD_GRAYSCALE), mask)
        assert json.loads(historian.payloads("/verdict")[0])["has_mask"] is True
    finally:
        bridge.kill()
        historian.close()
        station.close()


# a 5 s outage runs in every suite; EDGE_LONG_OUTAGES=1 adds a minute and ten minutes
OUTAGES = [5, *([60, 600] if os.environ.get("EDGE_LONG_OUTAGES") == "1" else [])]


class Feeder:
    """Results into the station at a steady rate (a line at 10 parts/s), from a thread."""

    def __init__(self, station: Station, rate: float = 10.0) -> None:
        self.station, self.period = station, 1 / rate
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sent.append(self.station.send(len(self.sent)))
            next_at += self.period
            self.stop.wait(max(next_at - time.monotonic(), 0))

    def finish(self) -> list[str]:
        self.stop.set()
        self.thread.join(5)
        return self.sent


@pytest.mark.parametrize("outage_s", OUTAGES)
def test_a_bridge_killed_for_an_outage_loses_no_verdict(tmp_path, broker, outage_s):
    """edge-mqtt-bridge SIGKILLed for `outage_s` while the line runs at 10 parts/s: after its
    restart it fetches everything it missed from the station's replay, page by page; the
    historian gets every verdict, and the bridge reports nothing lost. Its buffer (for a broker
    that is away) holds less than the replay: a replay waits for the broker, it does not overflow."""
    station = Station(tmp_path)
    historian = Historian(broker.port)
    buffer = ("--buffer", "4")  # far less than any replay: 10 verdicts (20 messages) a second away
    bridge = start_bridge(station.pub, station.query, broker.port, tmp_path, *buffer)
    try:
        wait_until(lambda: historian.payloads("/status"), 15, "the bridge's first status")
        feeder = Feeder(station)
        wait_until(lambda: len(historian.verdict_frames()) >= 20, 15, "verdicts through the bridge")
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(10)
        time.sleep(outage_s)
        bridge = start_bridge(station.pub, station.query, broker.port, tmp_path, *buffer)
        time.sleep(3)
        sent = feeder.finish()
        wait_until(lambda: set(sent) <= set(historian.verdict_frames()), 60 + outage_s / 5, "every verdict")
        time.sleep(1)  # a repeat would come now
        frames = historian.verdict_frames()
        status = json.loads(retained(broker.port, f"{ROOT}/line1/status"))
    finally:
        bridge.terminate()
        bridge.wait(15)
        historian.close()
        station.close()
    lost, doubled = len(set(sent) - set(frames)), len(frames) - len(set(frames))
    print(f"\nMQTT bridge down {outage_s} s at 10 parts/s: sent {len(sent)}, delivered {len(set(frames))}, "
          f"lost {lost}, doubled {doubled}, bridge's lost_verdicts {status['lost_verdicts']}")  # fmt: skip
    assert lost == 0 and status["lost_verdicts"] == 0
    assert "buffer full" not in (tmp_path / "bridge.log").read_text()
    assert doubled <= 100  # at least once: only what was in flight at the kill may come twice


def test_camera_states_reach_the_retained_status(tmp_path, broker):
    """The station's heartbeats carry each camera's state: the retained status says at once when a
    camera is gone, with the reason, and when it streams again."""
    station = Station(tmp_path)
    historian = Historian(broker.port)
    bridge = start_bridge(station.pub, station.query, broker.port, tmp_path)

    def status_of(camera: str) -> dict | None:
        payloads = historian.payloads("/status")
        return json.loads(payloads[-1]).get("cameras", {}).get(camera) if payloads else None

    try:
        wait_until(lambda: historian.payloads("/status"), 15, "the bridge's first status")
        station.report_camera("cam1", "gone", "the RTSP server answered 404 Not Found")
        wait_until(lambda: (status_of("cam1") or {}).get("state") == "gone", 5, "cam1 gone in the status")
        assert status_of("cam1")["reason"] == "the RTSP server answered 404 Not Found"
        station.report_camera("cam1", "streaming")
        wait_until(lambda: (status_of("cam1") or {}).get("state") == "streaming", 5, "cam1 streaming again")
        retained_status = json.loads(retained(broker.port, f"{ROOT}/line1/status"))
        assert retained_status["cameras"]["cam1"]["state"] == "streaming"
    finally:
        bridge.terminate()
        bridge.wait(15)
        historian.close()
        station.close()


def test_edge_run_starts_the_configured_bridge_and_drains_it_last(tmp_path, broker, bank_store):
    """bridges.mqtt in the station file: edge-run runs edge-mqtt-bridge beside the station (the same
    table edge-run --units lists for install.sh), and a historian gets the verdicts through it."""
    config = station_config(tmp_path, bank_store.root)
    raw = yaml.safe_load(config.read_text())
    camera = raw["cameras"][0]
    camera.update(trigger="free_run", trigger_endpoint=None, deadline_ms=None)
    camera["source"] = {"kind": "synthetic", "size": 160, "defect_rate": 0.3, "seed": 5, "rate_hz": 10}
    raw["bridges"] = {"mqtt": {"broker": f"127.0.0.1:{broker.port}", "topic_root": ROOT}}
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "edge.services.supervisor", str(config)]
    units = subprocess.run([*command, "--units"], capture_output=True, text=True, timeout=60)
    expected = ["edge.target", "edge-publisher.service", "edge-worker.service", "edge-capture@cam0.service"]
    assert units.stdout.split() == [*expected, "edge-mqtt-bridge.service"], units.stderr
    historian = Historian(broker.port)
    station = start_station(config)
    try:
        wait_until(lambda: len(historian.verdict_frames()) >= 10, 120, "verdicts through edge-run's bridge")
        wait_until(lambda: any(json.loads(p)["station_alive"] for p in historian.payloads("/status")), 10,
                   "the bridge's status to say the station is alive")  # fmt: skip
    finally:
        code, output = stop_station(station)
        historian.close()
    assert code == 0, output[-3000:]
    assert "started bridge:mqtt" in output and "not run" not in output
    frames = historian.verdict_frames()
    assert len(frames) == len(set(frames)) and all(f.startswith("cam0") for f in frames), frames[:5]
    assert output.index("edge.mqtt: bridge stopped") > output.index("publisher stopped")  # bridges drain last
