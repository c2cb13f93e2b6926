"""CURVE on the publisher: allowed subscribers hear it, others hear nothing; key generation; and no
file edge loads (configuration, bank, weights) can run code."""

from __future__ import annotations

import pickle
import shutil
import threading

import pytest
import zmq

from edge.client import Subscriber
from edge.engine.artifact import load_model
from edge.engine.weights import load_state_dict
from edge.errors import ArtifactError, WeightsError
from edge.keys import main as keys_main
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.protocol import Query, decode_reply, encode_query
from edge.security import CurveClient, CurveServer


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    for name in ("publisher", "mes", "intruder"):
        assert keys_main([name, "--dir", str(folder)]) == 0
    allowed = folder / "allowed"
    allowed.mkdir()
    shutil.copy(folder / "mes.key", allowed / "mes.key")
    return folder


def test_edge_keys_refuses_to_overwrite_or_misname(keys):
    assert (keys / "mes.key_secret").stat().st_mode & 0o777 == 0o600
    assert keys_main(["mes", "--dir", str(keys)]) == 2
    assert keys_main(["../etc/x", "--dir", str(keys)]) == 2


def test_only_allowed_subscribers_hear_a_curve_publisher(tmp_path, keys):
    context = zmq.Context()
    curve = CurveServer(str(keys / "publisher.key_secret"), str(keys / "allowed"))
    publisher = Publisher(
        PublisherSettings(
            "s",
            f"ipc://{tmp_path}/results",
            f"ipc://{tmp_path}/pub",
            f"ipc://{tmp_path}/latest",
            heartbeat_s=0.1,
            curve=curve,
        ),
        context,
    )
    stop = threading.Event()
    running = threading.Thread(target=publisher.run, args=(stop,))
    running.start()

    def client(name: str) -> CurveClient:
        return CurveClient(str(keys / f"{name}.key_secret"), str(keys / "publisher.key"))

    endpoint = f"ipc://{tmp_path}/pub"
    allowed = Subscriber(endpoint, "s", context=context, curve=client("mes"))
    intruder = Subscriber(endpoint, "s", context=context, curve=client("intruder"))
    plaintext = Subscriber(endpoint, "s", context=context)
    heard = allowed.receive(5)
    others = [intruder.receive(2), plaintext.receive(0.1)]

    answers = []
    for curve_client in (client("mes"), None):
        request = context.socket(zmq.REQ)
        request.setsockopt(zmq.LINGER, 0)
        if curve_client:
            curve_client.secure(request)
        request.connect(f"ipc://{tmp_path}/latest")
        request.send_multipart(encode_query(Query("c")))
        answers.append(decode_reply(request.recv_multipart())["verdict"] if request.poll(2000) else False)
        request.close()
    stop.set()
    running.join(10)
    for subscriber in (allowed, intruder, plaintext):
        subscriber.socket.close()
    context.destroy(linger=0)
    assert heard is not None and heard.heartbeat is not None
    assert others == [None, None]
    assert answers == [None, False]  # the allowed client is answered (no verdict yet); plaintext is not


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loaded_files_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights = tmp_path / "weights.pth"
    weights.write_bytes(pickle.dumps({"conv.weight": Exploit()}))
    with pytest.raises(WeightsError):
        load_state_dict(weights)
    bank = tmp_path / "bank.edge"
    bank.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ArtifactError):
        load_model(bank)
    assert not marker.exists()


def test_capture_to_worker_link_admits_only_allowed_captures(tmp_path, keys, fitted_model):
    from edge.pipeline.camera_state import Frame
    from edge.pipeline.capture import Capture, CaptureSettings
    from edge.pipeline.inspection import Bank
    from edge.pipeline.sources import SyntheticSource
    from edge.pipeline.worker import Worker, WorkerSettings

    context = zmq.Context()
    results = context.socket(zmq.PULL)
    results.bind(f"ipc://{tmp_path}/results")
    frames = f"ipc://{tmp_path}/frames"
    server = CurveServer(str(keys / "publisher.key_secret"), str(keys / "allowed"), domain="frames")
    worker = Worker(
        Bank(fitted_model, 1e9, "b", "1"),
        WorkerSettings("s", frames, f"ipc://{tmp_path}/results", curve=server),
        context,
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,))
    running.start()
    image = SyntheticSource(160, seed=1).read()
    counts = {}
    for name in ("mes", "intruder"):
        curve = CurveClient(str(keys / f"{name}.key_secret"), str(keys / "publisher.key"))
        capture = Capture(
            SyntheticSource(160, count=0), CaptureSettings("s", name, frames, curve=curve), context
        )
        for _ in range(3):
            capture.offer(Frame.now(image))
            threading.Event().wait(0.3)
        threading.Event().wait(1.0)
        counts[name] = worker.counters.frames_in  # frames received so far, all captures together
        capture.socket.setsockopt(zmq.LINGER, 0)
        capture.close()
    stop.set()
    running.join(10)
    results.close()
    context.destroy(linger=0)
    assert counts["mes"] >= 1  # the allowed capture's frames reach the worker
    assert counts["intruder"] == counts["mes"]  # the other capture's never do
