"""Bridge latency: from a worker's result to the verdict in a plant consumer's hands, p50/p99.

A real publisher (in this process); edge-mqtt-bridge as its own process with Debian's mosquitto on
loopback and a paho-mqtt subscriber with QoS 1; edge-opcua-bridge as its own process
(Basic256Sha256 SignAndEncrypt) with an asyncua client subscribed to ResultReady events; beside
them a plain ZeroMQ subscriber on the publisher, so each bridge's own share is the difference of
two columns measured on the same verdicts. Verdicts are sent at a steady rate (default 1,000 at 20
per second).

    python bench/bench_bridges.py [--verdicts 1000] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import zmq
from asyncua import Client, ua

from edge.client import Subscriber
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.protocol import Verdict, VerdictMessage, encode_result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = folder / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n{user}")
    process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        if time.monotonic() > deadline:
            raise SystemExit("mosquitto did not start (apt-get install mosquitto)")
        time.sleep(0.05)


def opcua_listener(
    url: str, pki: Path, seen: dict[str, float], stop: threading.Event, interval_ms: float = 0
) -> threading.Thread:
    """An asyncua client, in its own thread and event loop, noting when each ResultReady event came;
    `interval_ms`: its subscription's publishing interval (0: as fast as the server publishes;
    an MES typically asks for 10 ms or more, and events then wait for the next interval)."""

    class Handler:
        def event_notification(self, event) -> None:
            seen.setdefault(event.ResultId, time.perf_counter())

    async def listen() -> None:
        for _ in range(100):  # until the bridge answers (it starts in about 2 s)
            client = Client(url, timeout=10)
            client.application_uri = "urn:edge:bench-client"
            try:
                keys = f"{pki / 'client.der'},{pki / 'client.pem'},{pki / 'server.der'}"
                await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{keys}")
                await client.connect()
                break
            except (TimeoutError, OSError, ua.UaError):
                await asyncio.sleep(0.2)
        idx = await client.get_namespace_index("urn:edge:machine-vision")
        subscription = await client.create_subscription(interval_ms, Handler())
        event_type = await client.nodes.root.get_child(
            ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"]
        )
        await subscription.subscribe_events(client.get_node(ua.NodeId("line1", idx)), event_type)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await client.disconnect()

    thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    thread.start()
    return thread


def make_certificates(folder: Path) -> None:
    for arguments in (
        ["server.pem", "server.der"],
        ["client.pem", "client.der", "--client-uri", "urn:edge:bench-client"],
    ):
        command = [sys.executable, "-m", "edge.bridges.opcua", "--make-certificate"]
        subprocess.run(
            command + [str(folder / a) if a.endswith(("pem", "der")) else a for a in arguments], check=True
        )
    (folder / "trust").mkdir()
    (folder / "trust" / "client.der").write_bytes((folder / "client.der").read_bytes())


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))], ordered[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="verdicts per second")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edge-bench-bridges-"))
    broker, port = start_mosquitto(folder)
    context = zmq.Context()
    settings = PublisherSettings(
        "line1", f"ipc://{folder}/results", f"ipc://{folder}/pub", f"ipc://{folder}/q"
    )
    publisher = Publisher(settings, context)
    stop = threading.Event()
    publishing = threading.Thread(target=publisher.run, args=(stop,))
    publishing.start()
    bridge = subprocess.Popen(
        [sys.executable, "-m", "edge.bridges.mqtt", settings.publish_endpoint, "--station", "line1",
         "--query", settings.latest_endpoint, "--broker", f"127.0.0.1:{port}", "--topic-root", "bench"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    make_certificates(folder)
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/edge/"
    opcua_bridge = subprocess.Popen(
        [sys.executable, "-m", "edge.bridges.opcua", settings.publish_endpoint, "--station", "line1",
         "--query", settings.latest_endpoint, "--camera", "cam1", "--endpoint", opcua_url,
         "--certificate", str(folder / "server.der"), "--private-key", str(folder / "server.pem"),
         "--trust", str(folder / "trust")],
        stderr=(folder / "opcua.log").open("wb"),
    )  # fmt: skip
    sent: dict[str, float] = {}
    via_mqtt: dict[str, float] = {}
    via_zmq: dict[str, float] = {}
    via_opcua: dict[str, float] = {}
    via_opcua_10: dict[str, float] = {}

    def on_message(client, userdata, message) -> None:
        if message.topic.endswith("/verdict"):
            via_mqtt.setdefault(json.loads(message.payload)["frame_id"], time.perf_counter())

    historian = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-historian", clean_session=False
    )
    historian.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/#", qos=1)
    historian.on_message = on_message
    historian.connect("127.0.0.1", port)
    historian.loop_start()
    direct = Subscriber(settings.publish_endpoint, "line1", topics=("verdict",), context=context)

    def listen() -> None:
        while not stop.is_set():
            event = direct.receive(0.1)
            if event is not None and event.verdict is not None:
                via_zmq.setdefault(event.verdict.frame_id, time.perf_counter())

    listening = threading.Thread(target=listen)
    listening.start()
    opcua_client = opcua_listener(opcua_url, folder, via_opcua, stop)
    opcua_mes = opcua_listener(opcua_url, folder, via_opcua_10, stop, interval_ms=10)
    worker = context.socket(zmq.PUSH)
    worker.connect(settings.results_endpoint)
    time.sleep(5)  # the bridges connect to the broker and the station, the OPC UA client subscribes
    period = 1.0 / args.rate
    start = time.perf_counter()
    for index in range(args.verdicts):
        frame = f"f{index:06d}"
        due = start + index * period
        time.sleep(max(0.0, due - time.perf_counter()))
        message = VerdictMessage("line1", "cam1", frame, Verdict.OK, "t", index, score=0.5, threshold=1.0)
        sent[frame] = time.perf_counter()
        worker.send_multipart(encode_result(message, None))
    deadline = time.monotonic() + 10
    while (len(via_mqtt) < len(sent) or len(via_opcua) < len(sent)) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    listening.join(5)
    opcua_client.join(10)
    opcua_mes.join(10)
    opcua_bridge.terminate()
    opcua_bridge.wait(10)
    publishing.join(10)
    bridge.terminate()
    bridge.wait(10)
    historian.disconnect()
    historian.loop_stop()
    broker.terminate()
    broker.wait(10)
    worker.close(linger=0)
    direct.close()
    context.destroy(linger=0)

    print(f"{len(sent)} verdicts at {args.rate:g}/s; latency from the worker's result, ms")
    print(f"{'path':<52}{'received':>10}{'p50':>8}{'p99':>8}{'max':>8}")
    for name, seen in (
        ("ZeroMQ subscriber on the publisher", via_zmq),
        ("MQTT (edge-mqtt-bridge, mosquitto, QoS 1)", via_mqtt),
        ("OPC UA event (edge-opcua-bridge, SignAndEncrypt)", via_opcua),
        ("OPC UA event, a 10 ms publishing interval (an MES)", via_opcua_10),
    ):
        latencies = [(seen[f] - sent[f]) * 1000 for f in sent if f in seen]
        p50, p99, worst = percentiles(latencies) if latencies else (float("nan"),) * 3
        print(f"{name:<52}{len(latencies):>10}{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}")
    if len(via_opcua) < len(sent):
        print((folder / "opcua.log").read_text()[-3000:])
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if len(via_mqtt) == len(sent) == len(via_opcua) else 1


if __name__ == "__main__":
    sys.exit(main())
