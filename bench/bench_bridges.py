"""Bridge latency: from a worker's result to the verdict in a plant consumer's hands, p50/p99.

A real publisher (in this process), edge-mqtt-bridge as its own process, Debian's mosquitto on
loopback and a paho-mqtt subscriber with QoS 1; beside it a plain ZeroMQ subscriber on the
publisher, so the bridge's own share is the difference of two columns measured on the same
verdicts. Verdicts are sent at a steady rate (default 1,000 at 20 per second).

    python bench/bench_bridges.py [--verdicts 1000] [--rate 20]
"""

from __future__ import annotations

import argparse
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
    sent: dict[str, float] = {}
    via_mqtt: dict[str, float] = {}
    via_zmq: dict[str, float] = {}

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
    worker = context.socket(zmq.PUSH)
    worker.connect(settings.results_endpoint)
    time.sleep(3)  # the bridge connects to the broker and the station
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
    while len(via_mqtt) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    listening.join(5)
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
    print(f"{'path':<48}{'received':>10}{'p50':>8}{'p99':>8}{'max':>8}")
    for name, seen in (
        ("ZeroMQ subscriber on the publisher", via_zmq),
        ("MQTT (edge-mqtt-bridge, mosquitto, QoS 1)", via_mqtt),
    ):
        latencies = [(seen[f] - sent[f]) * 1000 for f in sent if f in seen]
        p50, p99, worst = percentiles(latencies) if latencies else (float("nan"),) * 3
        print(f"{name:<48}{len(latencies):>10}{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if len(via_mqtt) == len(sent) else 1


if __name__ == "__main__":
    sys.exit(main())
