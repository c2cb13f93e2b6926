"""What the plant-bridge tests share: a real publisher fed results as a worker sends them (and
restartable, as a station's publisher is), free loopback ports and condition waits."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import zmq

from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.protocol import CameraState, Verdict, VerdictMessage, encode_camera_report, encode_result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Station:
    """A real publisher (PUB, replay query, heartbeats every 0.2 s) on ipc endpoints in `folder`,
    and a PUSH socket sending it results the way a worker does."""

    def __init__(self, folder: Path, station: str = "line1") -> None:
        self.context = zmq.Context()
        self.station = station
        self.pub = f"ipc://{folder}/pub"
        self.query = f"ipc://{folder}/query"
        self.settings = PublisherSettings(
            station, f"ipc://{folder}/results", self.pub, self.query, heartbeat_s=0.2
        )
        self._start()
        self.worker = self.context.socket(zmq.PUSH)
        self.worker.connect(self.settings.results_endpoint)

    def _start(self) -> None:
        self.publisher = Publisher(self.settings, self.context)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.publisher.run, args=(self.stop,))
        self.thread.start()

    def restart_publisher(self) -> None:
        """A new publisher process would start a new epoch on the same endpoints: so does this one."""
        self.stop.set()
        self.thread.join(10)
        self._start()

    def send(self, index: int, camera: str = "cam1") -> str:
        frame = f"frame-{index:04d}"
        outcome = Verdict.NOK if index % 7 == 0 else Verdict.OK
        message = VerdictMessage(
            self.station, camera, frame, outcome, "2026-12-05T10:00:00Z", index, part_id=f"P{index}",
            score=0.5 + index / 1000, threshold=1.0, defect_area_px=index, bank_version="v0001",
        )  # fmt: skip
        self.worker.send_multipart(encode_result(message, None))
        return frame

    def report_camera(self, camera: str, state: str, reason: str | None = None) -> None:
        """A camera's state, as its capture process reports it to the publisher."""
        since = datetime.now(UTC).isoformat()
        self.worker.send_multipart(
            encode_camera_report(self.station, camera, CameraState(state, since, reason))
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.worker.close()
        self.context.destroy(linger=0)
