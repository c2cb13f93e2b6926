"""Running a real station for tests: edge-run in a subprocess on ipc endpoints in a test's folder,
and a line that triggers parts and collects what the publisher says about each."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
import zmq

from edge.client import Subscriber, control_request
from edge.protocol import encode_trigger

STATION = "st1"


def station_config(
    folder: Path,
    bank: Path,
    publisher: dict | None = None,
    pool: int | None = None,
    name: str = "station.yaml",
    recent: Path | None = None,
    **supervisor: float,
) -> Path:
    """A station on ipc endpoints in `folder`; `pool`: that many workers behind a broker; `recent`:
    its workers keep recent frames there."""
    ipc = {
        name: f"ipc://{folder}/{name}"
        for name in ("frames", "results", "pub", "latest", "control", "trig", "workers")
    }
    config = {
        "station": STATION,
        "bank": {"path": str(bank)},
        "endpoints": {k: ipc[k] for k in ("frames", "results", "latest", "control")}
        | {"publish": ipc["pub"]},
        "cameras": [
            {
                "name": "cam0",
                "source": {"kind": "synthetic", "size": 160, "defect_rate": 0.3, "seed": 5},
                "trigger": "triggered",
                "trigger_endpoint": ipc["trig"],
                "deadline_ms": 3000,
            }
        ],
        "worker": {"max_batch": 4, "max_wait_ms": 5},
        "publisher": {"heartbeat_s": 0.2, "default_deadline_ms": 3000, **(publisher or {})},
        "supervisor": {"restart_burst": 3, "restart_interval_s": 60, "drain_timeout_s": 20, **supervisor},
    }
    if recent is not None:
        config["recent_frames"] = {"path": str(recent), "max_frames": 50}
    if pool is not None:
        config["endpoints"]["workers"] = ipc["workers"]
        config["worker"]["count"] = pool
        config["broker"] = {"worker_timeout_s": 1.0}
        config["publisher"]["reorder_window_ms"] = 2500
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def start_station(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.services.supervisor", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def child_pid(parent: int, module: str) -> int | None:
    """The pid of `parent`'s (first) child whose command line holds `module` (Linux /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        try:
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " "):
                return int(pid)
        except FileNotFoundError:
            continue
    return None


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def subscribed(subscriber: Subscriber, timeout_s: float = 30) -> None:
    """Return once `subscriber` (which takes the heartbeat topic) hears a heartbeat: its
    subscription has then reached the publisher, and nothing published later is missed. The
    handshake that replaces a fixed "let it subscribe" sleep."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        event = subscriber.receive(remaining)
        if event is not None and event.heartbeat is not None:
            return
        assert event is None or event.verdict is None, f"a verdict came before the handshake: {event}"
    raise AssertionError(f"no heartbeat within {timeout_s} s: the subscription did not reach the publisher")


def wait_for_pool(endpoint: str, workers: int, timeout_s: float = 90) -> dict:
    """Ask the broker for its status until `workers` workers have joined and take frames."""
    deadline = time.monotonic() + timeout_s
    reply = None
    while time.monotonic() < deadline:
        reply = control_request(endpoint, "status", 1.0)
        if reply is not None and sum(not w["refused"] for w in reply["workers"]) >= workers:
            return reply
        time.sleep(0.2)
    raise AssertionError(f"{workers} workers did not join the broker within {timeout_s} s: {reply}")


def wait_for_worker(endpoint: str, timeout_s: float = 60) -> dict:
    """Ask the worker's control endpoint for its status until it answers (it binds once its bank loaded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = control_request(endpoint, "status", 1.0)
        if reply is not None:
            return reply
    raise AssertionError(f"the worker did not answer on {endpoint} within {timeout_s} s")


class Line:
    """Sends triggers to the station and collects what its publisher says about each part."""

    def __init__(self, context: zmq.Context, folder: Path) -> None:
        self.trigger = context.socket(zmq.PUSH)
        self.trigger.setsockopt(zmq.LINGER, 1000)
        self.trigger.connect(f"ipc://{folder}/trig")
        self.subscriber = Subscriber(
            f"ipc://{folder}/pub", STATION, topics=("verdict", "heartbeat"), context=context
        )
        self.verdicts: dict[str, list] = defaultdict(list)
        self.arrivals: list = []  # every verdict, in the order the publisher sent them
        self.sent: dict[str, int] = {}  # part → time.monotonic_ns() its trigger was sent
        self.cameras: dict[str, dict] = {}  # camera → its state in the latest heartbeat
        self.context = context
        self.folder = folder

    def wait_for_publisher(self) -> None:
        assert self.subscriber.receive(30) is not None, "the publisher did not start"

    def trigger_parts(
        self,
        names: list[str],
        period_s: float = 0.05,
        socket: zmq.Socket | None = None,
        products: list[str | None] | None = None,
    ) -> None:
        """Trigger each part (of `products[i]`, when given) and listen for `period_s` after each."""
        for index, name in enumerate(names):
            self.sent[name] = time.monotonic_ns()
            product = products[index] if products else None
            (socket or self.trigger).send_multipart(encode_trigger(name, product))
            self.collect(period_s)

    def trigger_socket(self, name: str) -> zmq.Socket:
        """Another camera's trigger endpoint (ipc://<folder>/<name>)."""
        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 1000)
        socket.connect(f"ipc://{self.folder}/{name}")
        return socket

    def tally(self, timeout_s: float) -> dict[str, int]:
        """What an integrator counts: parts sent, answered (exactly once), doubled, lost, and late —
        judged on a frame taken before its trigger was sent or more than `timeout_s` after."""
        answered = [p for p in self.sent if self.verdicts.get(p)]
        late = [
            p for p in answered if self.verdicts[p][0].verdict.value in ("OK", "NOK")
            and not 0 <= self.verdicts[p][0].capture_monotonic_ns - self.sent[p] <= timeout_s * 1e9
        ]  # fmt: skip
        return {
            "sent": len(self.sent),
            "answered": len(answered),
            "doubled": sum(len(self.verdicts[p]) > 1 for p in answered),
            "lost": len(self.sent) - len(answered),
            "late": len(late),
        }

    def wait_for_camera(self, camera: str, states: tuple[str, ...], timeout_s: float) -> dict:
        """Collect until the heartbeats say `camera` is in one of `states`; its state object."""
        deadline = time.monotonic() + timeout_s
        while self.cameras.get(camera, {}).get("state") not in states:
            assert time.monotonic() < deadline, f"{camera} not {states} within {timeout_s} s: {self.cameras}"
            self.collect(0.2)
        return self.cameras[camera]

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            event = self.subscriber.receive(remaining)
            if event is not None and event.verdict is not None:
                self.verdicts[event.verdict.part_id].append(event.verdict)
                self.arrivals.append(event.verdict)
            if event is not None and event.heartbeat is not None:
                self.cameras = event.heartbeat.cameras

    def collect_until_answered(self, parts: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self.verdicts.get(p) for p in parts):
            self.collect(0.2)


def stop_station(station: subprocess.Popen) -> tuple[int, str]:
    station.send_signal(signal.SIGTERM)
    output, _ = station.communicate(timeout=60)
    return station.returncode, output


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
