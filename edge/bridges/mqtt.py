"""edge-mqtt-bridge: a station's verdicts onto the site's MQTT broker, for historians, dashboards
and IIoT platforms.

Topic tree (ROOT is --topic-root, for example `acme/plant1/line3`; STATION and CAMERA are edge's
names):

    ROOT/STATION/CAMERA/verdict   every verdict, JSON (docs/protocol.md's verdict fields), QoS 1
    ROOT/STATION/CAMERA/last      the camera's latest verdict, the same JSON, retained
    ROOT/STATION/CAMERA/mask/ID   with --masks: the NOK mask as PNG bytes, QoS 1; ID is the frame id
                                  with / + # % escaped as %2F %2B %23 %25. Best effort: masks
                                  published while the bridge was away are not fetched again (counted
                                  in edge_mqtt_lost_masks_total and logged)
    ROOT/STATION/status           retained JSON: {"station_alive": bool, "last_heartbeat_utc": ...,
                                  "lost_verdicts": N, "last_loss": {...} or null, "cameras": {...}};
                                  station_alive follows the station's heartbeats, lost_verdicts
                                  counts what the station no longer held when the bridge asked for
                                  it, cameras is each camera's state as the heartbeats carry it
                                  (docs/protocol.md), published again whenever a state changes
    ROOT/STATION/bridge           retained: "online" while the bridge is connected; its last will,
                                  "offline", when it goes without disconnecting (killed, cut off)

Verdicts wait in a bounded buffer while the broker is away and go out in order once it is back;
past the bound the oldest are dropped, counted (edge_mqtt_dropped_total) and logged. The bridge
uses a persistent session (its client id), so verdicts in flight when the connection broke are
sent again; a consumer that must never see one twice drops repeats by frame_id.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.bridges.feed import Positions, station_side
from edge.cli_support import run_cli, setup_logging
from edge.client import RETRY_S, Event, Subscriber
from edge.errors import UsageError
from edge.protocol import VerdictMessage, dump_json, verdict_body
from edge.security import CurveClient
from edge.services.sdnotify import stop_on_signals

log = logging.getLogger("edge.mqtt")
MAX_INFLIGHT = 100  # QoS 1 messages handed to the client library and not yet acknowledged
STATUS_EVERY_S = 30.0  # the retained status is refreshed this often even when nothing changes
DROP_LOG_S = 10.0
MASK_WAIT_S = 5.0  # a NOK verdict's mask follows it at once; one not here by then was lost
MAX_AWAITED_MASKS = 10_000


@dataclass(frozen=True)
class MqttSettings:
    station_endpoint: str
    station: str
    broker_host: str
    broker_port: int = 1883
    topic_root: str = "edge"
    query_endpoint: str | None = None  # the publisher's replay endpoint: nothing lost across restarts
    client_id: str | None = None  # default: edge-<station>-<root>; fixed, for the persistent session
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None  # TLS with this CA bundle (and client certificate, where given)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    buffer: int = 10_000  # verdicts kept while the broker is away
    masks: bool = False
    alive_timeout_s: float = 3.0
    keepalive_s: int = 10
    state: Path | None = None  # positions file: a restarted bridge resumes there
    camera: str | None = None  # only this camera's verdicts (default: all)
    curve: CurveClient | None = None


def mask_topic_key(frame_id: str) -> str:
    """A frame id as one topic level: MQTT's separator and wildcards escaped."""
    return frame_id.replace("%", "%25").replace("/", "%2F").replace("+", "%2B").replace("#", "%23")


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    verdict: VerdictMessage | None = None  # for positions: acknowledged means passed on


@dataclass
class MqttCounters:
    published: int = 0  # acknowledged by the broker
    dropped: int = 0  # past the buffer's bound
    malformed: int = 0
    lost: int = 0  # verdicts the station's replay could not recover
    connects: int = 0
    waiting: int = 0
    inflight: int = 0
    connected: bool = False
    station_alive: bool = False
    drops_logged: int = 0
    lost_masks: int = 0  # NOK masks published while the bridge was away, or not received (best effort)


class MqttBridge:
    def __init__(self, settings: MqttSettings) -> None:
        import paho.mqtt.client as mqtt

        self.settings = settings
        self.counters = MqttCounters()
        self.positions = Positions.load(settings.state)
        topics = ("verdict", "heartbeat", "mask") if settings.masks else ("verdict", "heartbeat")
        self.subscriber = Subscriber(
            settings.station_endpoint,
            settings.station,
            topics=topics,
            curve=settings.curve,
            query_endpoint=settings.query_endpoint,
        )
        self.base = f"{settings.topic_root}/{settings.station}"
        self._broker = (settings.broker_host, settings.broker_port)
        self.lock = threading.Lock()
        self.waiting: deque[_Outgoing] = deque()
        self.inflight: dict[int, _Outgoing] = {}
        self.early: set[int] = set()
        self.queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        self.last_heard = -math.inf
        self.last_heartbeat_utc: str | None = None
        self.last_loss: dict | None = None
        # NOK frames whose mask has not come yet (those of OK verdicts are not published)
        self.awaiting_masks: dict[str, float] = {}
        self.alive: bool | None = None
        self.next_status = 0.0
        self.camera_states: dict[str, dict] = {}  # from the latest heartbeat
        self.next_drop_log = 0.0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id
            or f"edge-{settings.station}-{settings.topic_root.replace('/', '-')}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.max_queued_messages_set(MAX_INFLIGHT)
        self.client.will_set(f"{self.base}/bridge", b"offline", qos=1, retain=True)
        if settings.username is not None:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls_ca is not None:
            self.client.tls_set(
                ca_certs=str(settings.tls_ca),
                certfile=str(settings.tls_cert) if settings.tls_cert else None,
                keyfile=str(settings.tls_key) if settings.tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(settings.broker_host, settings.broker_port, keepalive=settings.keepalive_s)
        self.client.loop_start()
        if self.positions.saved:
            self.subscriber.resume(self.positions.saved)
            where = ", ".join(f"{t}{e}/{s}" for t, (e, s) in self.positions.saved.items())
            if self.subscriber.unfetched:
                log.warning("resuming after %s: the station does not answer yet; asking again every %.0f s",
                            where, RETRY_S)  # fmt: skip
            else:
                log.info("resumed after %s: %d verdict(s) published meanwhile fetched from the station",
                         where, self.subscriber.recovered)  # fmt: skip

    # ---- broker side (the client library's thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", *self._broker, reason_code)
            return
        with self.lock:
            self.counters.connected = True
            self.counters.connects += 1
        session = "resumed" if flags.session_present else "new"
        log.info("connected to broker %s:%d (session %s)", *self._broker, session)
        client.publish(f"{self.base}/bridge", b"online", qos=1, retain=True)
        self.next_status = 0.0  # the status again, at once

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.lock:
            was = self.counters.connected
            self.counters.connected = False
        if was:
            log.warning(
                "lost the broker %s:%d (%s): buffering up to %d messages",
                *self._broker,
                reason_code,
                self.settings.buffer,
            )

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            done = self.inflight.pop(mid, None)
            if done is None:  # acknowledged before _flush recorded it (or the bridge's own online/offline)
                if len(self.early) > MAX_INFLIGHT * 10:  # only ever needed for a moment
                    self.early.clear()
                self.early.add(mid)
                return
            self._acknowledged(done)

    def _acknowledged(self, message: _Outgoing) -> None:
        """With the lock held."""
        self.counters.published += 1
        if message.verdict is not None:
            self.positions.acknowledged(message.verdict)

    # ---- station side (the bridge's own thread) ----------------------------------------------------
    def _enqueue(self, message: _Outgoing) -> None:
        with self.lock:
            self.waiting.append(message)
            overflow = len(self.waiting) - self.settings.buffer
            for _ in range(max(overflow, 0)):
                self.waiting.popleft()
                self.counters.dropped += 1

    def _flush(self) -> None:
        """Hand waiting messages to the client library while connected and under the in-flight cap
        (never under the lock: the library's thread takes it in its callbacks)."""
        while True:
            with self.lock:
                if not self.counters.connected or not self.waiting or len(self.inflight) >= MAX_INFLIGHT:
                    return
                message = self.waiting.popleft()
                if message.verdict is not None:
                    self.positions.sent(message.verdict)
            info = self.client.publish(message.topic, message.payload, qos=1, retain=message.retain)
            with self.lock:
                if info.rc == self.queue_full:  # not taken: first in line again
                    self.waiting.appendleft(message)
                    return
                # taken (also when the connection just broke: the library sends it on reconnecting)
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self._acknowledged(message)
                else:
                    self.inflight[info.mid] = message

    def _losses(self) -> None:
        """What the station no longer held when asked: counted, logged with its range, reported
        on the status topic."""
        for loss in self.subscriber.take_losses():
            kind = loss.topic.split(".")[0]
            if kind == "verdict" and self.settings.camera in (None, loss.topic.split(".")[2]):
                self.counters.lost += loss.count or 0
                self.last_loss = {"topic": loss.topic, "epoch": loss.epoch, "from_seq": loss.from_seq,
                                  "to_seq": loss.to_seq, "count": loss.count}  # fmt: skip
                log.error("%s (not recoverable from the station)", loss)
                self.next_status = 0.0  # the status says so at once

    def _masks_lost(self, frame_ids: list[str], why: str) -> None:
        self.counters.lost_masks += len(frame_ids)
        log.warning("no mask for %s (%s): masks are best effort, %d lost so far",
                    ", ".join(frame_ids[:5]) + (" ..." if len(frame_ids) > 5 else ""), why,
                    self.counters.lost_masks)  # fmt: skip

    def _overdue_masks(self, now: float) -> None:
        overdue = [frame for frame, due in self.awaiting_masks.items() if due < now]
        if overdue:
            for frame in overdue:
                del self.awaiting_masks[frame]
            self._masks_lost(overdue, "not received")

    def _verdict(self, event: Event) -> None:
        verdict = event.verdict
        assert verdict is not None
        if verdict.verdict == "NOK" and verdict.has_mask and self.settings.masks:
            if event.replayed:
                self._masks_lost([verdict.frame_id], "published while the bridge was away")
            elif len(self.awaiting_masks) < MAX_AWAITED_MASKS:
                self.awaiting_masks[verdict.frame_id] = time.monotonic() + MASK_WAIT_S
        payload = dump_json(verdict_body(verdict))
        camera = f"{self.base}/{verdict.camera}"
        self._enqueue(_Outgoing(f"{camera}/verdict", payload, verdict=verdict))
        self._enqueue(_Outgoing(f"{camera}/last", payload, retain=True))

    def _cameras(self, cameras: dict[str, dict]) -> None:
        """A heartbeat's camera states; a change of any camera's state or reason is published at once."""

        def key(states: dict[str, dict]) -> dict:
            return {name: (state["state"], state.get("reason")) for name, state in states.items()}

        if key(cameras) != key(self.camera_states):
            self.next_status = 0.0
        self.camera_states = cameras

    def _status(self, now: float) -> None:
        alive = now - self.last_heard < self.settings.alive_timeout_s
        if alive != self.alive or now >= self.next_status:
            if alive != self.alive and self.alive is not None:
                level = logging.INFO if alive else logging.WARNING
                log.log(level, "station %s alive: %s", self.settings.station, alive)
            self.alive = alive
            self.counters.station_alive = alive
            self.next_status = now + STATUS_EVERY_S
            body = {
                "station_alive": alive,
                "last_heartbeat_utc": self.last_heartbeat_utc,
                "lost_verdicts": self.counters.lost,
                "last_loss": self.last_loss,
                "cameras": self.camera_states,
            }
            with self.lock:
                # the newest status replaces any not yet sent: retained state, not a history
                self.waiting = deque(m for m in self.waiting if m.topic != f"{self.base}/status")
            self._enqueue(_Outgoing(f"{self.base}/status", json.dumps(body).encode(), retain=True))

    def _backlogged(self) -> bool:
        """Connected, with half the buffer waiting: a replay after an outage arrives faster than
        the broker acknowledges it, so the broker catches up before more is taken (the station
        holds the rest; the buffer's bound is for a broker that is away, not for a replay)."""
        with self.lock:
            return self.counters.connected and len(self.waiting) >= max(self.settings.buffer // 2, 1)

    def _holding_replay(self) -> bool:
        """The broker is away (not connected yet, say, at start) and the next event is a replayed
        verdict: it stays with the station, which holds it, rather than overflow a buffer that is
        meant for live verdicts."""
        with self.lock:
            connected = self.counters.connected
        return not connected and bool(self.subscriber.pending) and self.subscriber.pending[0].replayed

    def step(self, timeout_s: float = 0.05) -> None:
        if self._backlogged() or self._holding_replay():
            self._flush()
            time.sleep(min(timeout_s, 0.01))  # acknowledgements free room
            return
        event = self.subscriber.receive(timeout_s)
        now = time.monotonic()
        if event is not None:
            if not event.replayed:  # a replayed verdict says nothing about the station now
                self.last_heard = now
            if event.heartbeat is not None:
                self.last_heartbeat_utc = datetime.now(UTC).isoformat(timespec="milliseconds")
                self._cameras(event.heartbeat.cameras)
            elif event.verdict is not None and self.settings.camera in (None, event.verdict.camera):
                self._verdict(event)
            elif event.mask_png is not None and event.frame_id is not None:
                camera = event.topic.split(".")[2]
                if self.settings.camera in (None, camera) and self.awaiting_masks.pop(event.frame_id, None):
                    topic = f"{self.base}/{camera}/mask/{mask_topic_key(event.frame_id)}"
                    self._enqueue(_Outgoing(topic, event.mask_png))
        self._losses()
        self._overdue_masks(now)
        self._status(now)
        self._flush()
        self._report_drops(now)

    def _report_drops(self, now: float) -> None:
        self.counters.malformed = self.subscriber.malformed
        if self.counters.dropped > self.counters.drops_logged and now >= self.next_drop_log:
            log.error(
                "buffer full (%d) while the broker is away: %d oldest message(s) dropped so far",
                self.settings.buffer,
                self.counters.dropped,
            )
            self.counters.drops_logged = self.counters.dropped
            self.next_drop_log = now + DROP_LOG_S

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        if ready is not None:
            ready.set()
        while not stop.is_set():
            self.step()
        self.close()

    def close(self) -> None:
        """Drain what the broker can still take (a few seconds at most), then say goodbye."""
        deadline = time.monotonic() + 5
        while (self.waiting or self.inflight) and self.counters.connected and time.monotonic() < deadline:
            self._flush()
            time.sleep(0.02)
        left = len(self.waiting) + len(self.inflight)
        if left:
            log.warning("stopping with %d message(s) not acknowledged by the broker", left)
        if self.counters.connected:
            self.client.publish(f"{self.base}/bridge", b"offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.subscriber.close()

    def samples(self) -> list[tuple]:
        """Prometheus samples (edge.metrics.ProcessMetrics.snapshot)."""
        with self.lock:
            waiting, inflight = len(self.waiting), len(self.inflight)
        c = self.counters
        return [
            ("counter", "edge_mqtt_published", "messages the broker acknowledged", c.published),
            ("counter", "edge_mqtt_dropped", "messages dropped past the buffer's bound", c.dropped),
            ("counter", "edge_mqtt_lost_verdicts", "verdicts the station no longer held when asked", c.lost),
            ("counter", "edge_mqtt_lost_masks", "NOK masks missed (best effort)", c.lost_masks),
            ("counter", "edge_mqtt_malformed", "malformed messages from the station", c.malformed),
            ("counter", "edge_mqtt_connects", "connections made to the broker", c.connects),
            ("gauge", "edge_mqtt_buffered", "messages waiting for the broker", waiting),
            ("gauge", "edge_mqtt_inflight", "messages sent, not yet acknowledged", inflight),
            ("gauge", "edge_mqtt_connected", "1 while connected to the broker", int(c.connected)),
            (
                "gauge",
                "edge_mqtt_station_alive",
                "1 while the station's heartbeats arrive",
                int(c.station_alive),
            ),
        ]


def _address(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if not host or (port and not port.isdigit()):
        raise UsageError(f"{value!r}: give HOST or HOST:PORT")
    return host, int(port or default_port)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-mqtt-bridge",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 stopped; 2 bad usage; 6 bad key file; 130 interrupted",
    )
    parser.add_argument(
        "station_endpoint", nargs="?", help="the station's PUB endpoint, e.g. tcp://station:5556"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the station's YAML: endpoints, keys and bridges.mqtt (instead of the rest)",
    )
    parser.add_argument("--station", help="station name (topics verdict.<station>.*)")
    parser.add_argument(
        "--query", help="the publisher's query endpoint: verdicts missed while away are fetched"
    )
    parser.add_argument("--broker", help="MQTT broker HOST[:PORT] (1883, or 8883 with TLS)")
    parser.add_argument(
        "--topic-root", default="edge", help="topic prefix, e.g. acme/plant1/line3 (default edge)"
    )
    parser.add_argument("--client-id", help="MQTT client id (default edge-<station>-<root>)")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password-file", type=Path, help="a file holding the broker password")
    parser.add_argument("--tls-ca", type=Path, help="TLS: the CA bundle that signed the broker's certificate")
    parser.add_argument("--tls-cert", type=Path, help="TLS: this bridge's certificate (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="TLS: this bridge's private key")
    parser.add_argument("--buffer", type=int, default=10_000, help="verdicts kept while the broker is away")
    parser.add_argument("--masks", action="store_true", help="publish NOK masks as PNG (off by default)")
    parser.add_argument("--camera", help="only this camera's verdicts")
    parser.add_argument(
        "--alive-timeout", type=float, default=3.0, help="seconds without heartbeats (default 3)"
    )
    parser.add_argument(
        "--state", type=Path, help="positions file: a restarted bridge resumes where it stopped"
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--client-key", help="CURVE: this bridge's .key_secret")
    parser.add_argument("--server-key", help="CURVE: the publisher's public .key")
    args = parser.parse_args(argv)
    setup_logging()
    if args.config is not None:
        if args.station_endpoint or args.station or args.broker:
            raise UsageError("--config gives the station, its endpoints and the broker: leave the others out")
        settings, metrics_port = settings_from_config(args.config)
    else:
        if not (args.station_endpoint and args.station and args.broker):
            raise UsageError("give the station's endpoint, --station and --broker (or --config station.yaml)")
        settings, metrics_port = settings_from(args), args.metrics_port
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise UsageError("the MQTT bridge needs paho-mqtt: pip install 'edge[mqtt]'") from None
    stop = stop_on_signals()
    bridge = MqttBridge(settings)
    if metrics_port is not None:
        from edge.metrics import ProcessMetrics

        metrics = ProcessMetrics("mqtt-bridge", settings.station)
        metrics.snapshot(bridge.samples)
        metrics.serve(metrics_port)
    bridge.run(stop)
    return 0


def settings_from(args: argparse.Namespace) -> MqttSettings:
    """The bridge's settings from its command line; a mistake is a UsageError naming it."""
    tls = args.tls_ca is not None
    host, port = _address(args.broker, 8883 if tls else 1883)
    if any(part in args.topic_root for part in "+#") or args.topic_root.strip("/") != args.topic_root:
        raise UsageError("--topic-root holds no + or # and neither starts nor ends with /")
    if args.buffer < 1 or args.alive_timeout <= 0:
        raise UsageError("--buffer must be at least 1 and --alive-timeout positive")
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_cert is not None and not tls):
        raise UsageError("a client certificate needs --tls-cert, --tls-key and --tls-ca")
    for path in (args.tls_ca, args.tls_cert, args.tls_key, args.password_file):
        if path is not None and not path.is_file():
            raise UsageError(f"{path} does not exist")
    if (args.client_key is None) != (args.server_key is None):
        raise UsageError("CURVE needs both --client-key and --server-key")
    password = args.password_file.read_text().strip() if args.password_file else None
    return MqttSettings(
        station_endpoint=args.station_endpoint,
        station=args.station,
        broker_host=host,
        broker_port=port,
        topic_root=args.topic_root,
        query_endpoint=args.query,
        client_id=args.client_id,
        username=args.username,
        password=password,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        buffer=args.buffer,
        masks=args.masks,
        alive_timeout_s=args.alive_timeout,
        state=args.state,
        camera=args.camera,
        curve=CurveClient(args.client_key, args.server_key) if args.client_key else None,
    )


def settings_from_config(path: Path) -> tuple[MqttSettings, int | None]:
    """The bridge's settings from the station's YAML (its `bridges.mqtt` section, endpoints and
    keys), and its metrics port; a mistake is a ConfigError naming the key."""
    side = station_side(path, "mqtt")
    mqtt = side.section
    host, port = _address(mqtt.broker, 8883 if mqtt.tls_ca else 1883)
    state = mqtt.state
    if state is None and os.environ.get("STATE_DIRECTORY"):  # systemd's StateDirectory=
        state = str(Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "mqtt-positions.json")
    settings = MqttSettings(
        station_endpoint=side.station_endpoint,
        station=side.station,
        broker_host=host,
        broker_port=port,
        topic_root=mqtt.topic_root,
        query_endpoint=side.query_endpoint,
        client_id=mqtt.client_id,
        username=mqtt.username,
        password=Path(mqtt.password_file).read_text().strip() if mqtt.password_file else None,
        tls_ca=Path(mqtt.tls_ca) if mqtt.tls_ca else None,
        tls_cert=Path(mqtt.tls_cert) if mqtt.tls_cert else None,
        tls_key=Path(mqtt.tls_key) if mqtt.tls_key else None,
        buffer=mqtt.buffer,
        masks=mqtt.masks,
        alive_timeout_s=mqtt.alive_timeout_s,
        state=Path(state) if state else None,
        curve=side.curve,
    )
    return settings, mqtt.metrics_port


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
