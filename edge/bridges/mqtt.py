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

import json
import logging
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.bridges.base import Bridge, StationLink, bridge_main, host_port
from edge.cli_support import run_cli
from edge.client import Event, Loss
from edge.config import MqttBridgeConfig
from edge.protocol import Heartbeat, VerdictMessage, dump_json, verdict_body

log = logging.getLogger("edge.mqtt")
MAX_INFLIGHT = 100  # QoS 1 messages handed to the client library and not yet acknowledged
STATUS_EVERY_S = 30.0  # the retained status is refreshed this often even when nothing changes
DROP_LOG_S = 10.0
MASK_WAIT_S = 5.0  # a NOK verdict's mask follows it at once; one not here by then was lost
MAX_AWAITED_MASKS = 10_000


KEEPALIVE_S = 10


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
    connects: int = 0
    connected: bool = False
    drops_logged: int = 0
    lost_masks: int = 0  # NOK masks published while the bridge was away, or not received (best effort)


class MqttBridge(Bridge):
    name = "mqtt"
    section_type = MqttBridgeConfig
    section: MqttBridgeConfig

    def __init__(self, link: StationLink, section: MqttBridgeConfig) -> None:
        import paho.mqtt.client as mqtt

        self.counters = MqttCounters()
        self.base = f"{section.topic_root}/{link.station}"
        self.broker = host_port(section.broker, 8883 if section.tls_ca else 1883)
        self.lock = threading.Lock()
        self.waiting: deque[_Outgoing] = deque()
        self.inflight: dict[int, _Outgoing] = {}
        self.early: set[int] = set()
        self.queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        self.last_heartbeat_utc: str | None = None
        # NOK frames whose mask has not come yet (those of OK verdicts are not published)
        self.awaiting_masks: dict[str, float] = {}
        self.next_status = 0.0
        self.camera_states: dict[str, dict] = {}  # from the latest heartbeat
        self.next_drop_log = 0.0
        topics = ("verdict", "heartbeat", "mask") if section.masks else ("verdict", "heartbeat")
        super().__init__(link, section, topics)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=section.client_id or f"edge-{link.station}-{section.topic_root.replace('/', '-')}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.max_queued_messages_set(MAX_INFLIGHT)
        self.client.will_set(f"{self.base}/bridge", b"offline", qos=1, retain=True)
        if section.username is not None:
            password = Path(section.password_file).read_text().strip() if section.password_file else None
            self.client.username_pw_set(section.username, password)
        if section.tls_ca is not None:
            self.client.tls_set(
                ca_certs=section.tls_ca, certfile=section.tls_cert, keyfile=section.tls_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )  # fmt: skip
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(*self.broker, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    # ---- broker side (the client library's thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.log.error("broker %s:%d refused the connection: %s", *self.broker, reason_code)
            return
        with self.lock:
            self.counters.connected = True
            self.counters.connects += 1
        session = "resumed" if flags.session_present else "new"
        self.log.info("connected to broker %s:%d (session %s)", *self.broker, session)
        client.publish(f"{self.base}/bridge", b"online", qos=1, retain=True)
        self.next_status = 0.0  # the status again, at once

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.lock:
            was = self.counters.connected
            self.counters.connected = False
        if was:
            self.log.warning("lost the broker %s:%d (%s): buffering up to %d messages",
                             *self.broker, reason_code, self.section.buffer)  # fmt: skip

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
            overflow = len(self.waiting) - self.section.buffer
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

    def on_loss(self, camera: str, loss: Loss) -> None:
        self.next_status = 0.0  # the status says so at once

    def _masks_lost(self, frame_ids: list[str], why: str) -> None:
        self.counters.lost_masks += len(frame_ids)
        self.log.warning("no mask for %s (%s): masks are best effort, %d lost so far",
                         ", ".join(frame_ids[:5]) + (" ..." if len(frame_ids) > 5 else ""), why,
                         self.counters.lost_masks)  # fmt: skip

    def _overdue_masks(self, now: float) -> None:
        overdue = [frame for frame, due in self.awaiting_masks.items() if due < now]
        if overdue:
            for frame in overdue:
                del self.awaiting_masks[frame]
            self._masks_lost(overdue, "not received")

    def on_verdict(self, event: Event, verdict: VerdictMessage) -> None:
        if verdict.verdict == "NOK" and verdict.has_mask and self.section.masks:
            if event.replayed:
                self._masks_lost([verdict.frame_id], "published while the bridge was away")
            elif len(self.awaiting_masks) < MAX_AWAITED_MASKS:
                self.awaiting_masks[verdict.frame_id] = time.monotonic() + MASK_WAIT_S
        payload = dump_json(verdict_body(verdict))
        camera = f"{self.base}/{verdict.camera}"
        self._enqueue(_Outgoing(f"{camera}/verdict", payload, verdict=verdict))
        self._enqueue(_Outgoing(f"{camera}/last", payload, retain=True))

    def on_mask(self, camera: str, frame_id: str, png: bytes) -> None:
        if self.awaiting_masks.pop(frame_id, None):
            self._enqueue(_Outgoing(f"{self.base}/{camera}/mask/{mask_topic_key(frame_id)}", png))

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A heartbeat's camera states; a change of any camera's state or reason is published at once."""
        self.last_heartbeat_utc = datetime.now(UTC).isoformat(timespec="milliseconds")

        def key(states: dict[str, dict]) -> dict:
            return {name: (state["state"], state.get("reason")) for name, state in states.items()}

        if key(heartbeat.cameras) != key(self.camera_states):
            self.next_status = 0.0
        self.camera_states = heartbeat.cameras

    def on_alive(self, alive: bool) -> None:
        self.next_status = 0.0

    def _status(self, now: float) -> None:
        if now < self.next_status:
            return
        self.next_status = now + STATUS_EVERY_S
        loss = self.last_loss
        body = {
            "station_alive": bool(self.alive),
            "last_heartbeat_utc": self.last_heartbeat_utc,
            "lost_verdicts": self.lost,
            "last_loss": None if loss is None else {**asdict(loss), "count": loss.count},
            "cameras": self.camera_states,
        }
        with self.lock:
            # the newest status replaces any not yet sent: retained state, not a history
            self.waiting = deque(m for m in self.waiting if m.topic != f"{self.base}/status")
        self._enqueue(_Outgoing(f"{self.base}/status", json.dumps(body).encode(), retain=True))

    def holding(self) -> bool:
        """Connected, with half the buffer waiting: a replay after an outage arrives faster than
        the broker acknowledges it, so the broker catches up before more is taken (the station
        holds the rest; the buffer's bound is for a broker that is away, not for a replay). Or the
        broker is away (not connected yet, say, at start) and the next event is a replayed
        verdict: it stays with the station, which holds it, rather than overflow a buffer that is
        meant for live verdicts."""
        with self.lock:
            connected = self.counters.connected
            backlogged = connected and len(self.waiting) >= max(self.section.buffer // 2, 1)
        pending = self.subscriber.pending
        return backlogged or (not connected and bool(pending) and pending[0].replayed)

    def wait_downstream(self, timeout_s: float) -> None:
        self._flush()
        time.sleep(timeout_s)  # acknowledgements free room

    def tick(self, now: float) -> None:
        self._overdue_masks(now)
        self._status(now)
        self._flush()
        self._report_drops(now)

    def _report_drops(self, now: float) -> None:
        if self.counters.dropped > self.counters.drops_logged and now >= self.next_drop_log:
            self.log.error("buffer full (%d) while the broker is away: %d oldest message(s) dropped so far",
                           self.section.buffer, self.counters.dropped)  # fmt: skip
            self.counters.drops_logged = self.counters.dropped
            self.next_drop_log = now + DROP_LOG_S

    def close(self) -> None:
        """Drain what the broker can still take (a few seconds at most), then say goodbye."""
        deadline = time.monotonic() + 5
        while (self.waiting or self.inflight) and self.counters.connected and time.monotonic() < deadline:
            self._flush()
            time.sleep(0.02)
        left = len(self.waiting) + len(self.inflight)
        if left:
            self.log.warning("stopping with %d message(s) not acknowledged by the broker", left)
        if self.counters.connected:
            self.client.publish(f"{self.base}/bridge", b"offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        super().close()

    def own_samples(self) -> list[tuple]:
        with self.lock:
            waiting, inflight = len(self.waiting), len(self.inflight)
        c = self.counters
        return [
            ("counter", "edge_mqtt_published", "messages the broker acknowledged", c.published),
            ("counter", "edge_mqtt_dropped", "messages dropped past the buffer's bound", c.dropped),
            ("counter", "edge_mqtt_lost_masks", "NOK masks missed (best effort)", c.lost_masks),
            ("counter", "edge_mqtt_connects", "connections made to the broker", c.connects),
            ("gauge", "edge_mqtt_buffered", "messages waiting for the broker", waiting),
            ("gauge", "edge_mqtt_inflight", "messages sent, not yet acknowledged", inflight),
            ("gauge", "edge_mqtt_connected", "1 while connected to the broker", int(c.connected)),
        ]


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bridge_main(MqttBridge, argv, __doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main())
