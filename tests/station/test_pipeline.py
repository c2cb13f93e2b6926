"""Worker and publisher over real ZeroMQ sockets (ipc), driven the way capture and an MES drive them."""

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import cv2
import numpy as np
import pytest
import zmq

from edge.client import Subscriber
from edge.imageio import read_image
from edge.pipeline.inspection import Bank
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, Query, Verdict, decode_reply, encode_frame, encode_query

STATION = "line1"


@pytest.fixture
def pipeline(tmp_path, fitted_model, synthetic_category):
    good = [read_image(s.path) for s in synthetic_category.test if s.label == 0]
    threshold = 1.02 * max(r.score for r in fitted_model.score(good))
    bank = Bank(fitted_model, threshold, bank_id="synthetic", version="1")
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub", "latest")}
    context = zmq.Context()
    publisher = Publisher(
        PublisherSettings(
            STATION, endpoints["results"], endpoints["pub"], endpoints["latest"], heartbeat_s=0.2
        ),
        context,
    )
    worker = Worker(bank, WorkerSettings(STATION, endpoints["frames"], endpoints["results"]), context)
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in (publisher, worker)]
    for thread in threads:
        thread.start()
    subscriber = Subscriber(endpoints["pub"], STATION, context=context)
    assert _first(subscriber, lambda e: e.heartbeat is not None, 10), "no heartbeat: publisher not reachable"
    sender = context.socket(zmq.PUSH)
    sender.setsockopt(zmq.LINGER, 0)
    sender.connect(endpoints["frames"])
    yield {
        "bank": bank,
        "sender": sender,
        "subscriber": subscriber,
        "worker": worker,
        "publisher": publisher,
        "threads": threads,
        "context": context,
        "endpoints": endpoints,
    }
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    sender.close()
    subscriber.socket.close()
    context.destroy(linger=0)


def _first(subscriber, wanted, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = subscriber.receive(0.2)
        if event is not None and wanted(event):
            return event
    return None


def _frame(index: int, image: np.ndarray, camera: str = "cam0") -> list:
    header = FrameHeader(
        station=STATION,
        camera=camera,
        seq=index,
        frame_id=f"f-{index}",
        capture_utc="2026-11-29T03:00:00Z",
        capture_monotonic_ns=time.monotonic_ns(),
        height=image.shape[0],
        width=image.shape[1],
        channels=1 if image.ndim == 2 else 3,
    )
    return encode_frame(header, image)


def _collect(subscriber, count: int, timeout_s: float = 120):
    verdicts, masks, gaps = {}, 0, 0
    deadline = time.monotonic() + timeout_s
    while len(verdicts) < count and time.monotonic() < deadline:
        event = subscriber.receive(0.5)
        if event is None or event.heartbeat is not None:
            continue
        gaps += event.gap
        if event.verdict is not None:
            assert event.verdict.frame_id not in verdicts, "a frame got two verdicts"
            verdicts[event.verdict.frame_id] = event.verdict
        else:
            masks += 1
    return verdicts, masks, gaps


def test_every_frame_gets_exactly_its_engine_score(pipeline, fitted_model, synthetic_category):
    images = [read_image(s.path) for s in synthetic_category.test]
    images.append(cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY))  # mono frames travel too
    for index, image in enumerate(images):
        pipeline["sender"].send_multipart(_frame(index, image))
    verdicts, masks, gaps = _collect(pipeline["subscriber"], len(images))
    assert sorted(verdicts) == sorted(f"f-{i}" for i in range(len(images)))
    assert gaps == 0 and masks >= len(images) - 1
    offline = fitted_model.score(images)
    threshold = pipeline["bank"].threshold
    for index, result in enumerate(offline):
        verdict = verdicts[f"f-{index}"]
        assert verdict.score == pytest.approx(result.score, rel=1e-5)
        assert verdict.verdict == (Verdict.NOK if result.score > threshold else Verdict.OK)
        assert verdict.bank_id == "synthetic" and verdict.threshold == threshold
    labels = [s.label for s in synthetic_category.test]
    assert sum(
        verdicts[f"f-{i}"].verdict == Verdict.NOK for i, label in enumerate(labels) if label
    ) >= 0.8 * sum(labels)

    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.tail",
            pipeline["endpoints"]["pub"],
            "--station",
            STATION,
            "--count",
            "2",
            "--timeout",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _first(pipeline["subscriber"], lambda e: e.heartbeat is not None, 10)
    assert "receiving from" in tail.stderr.readline(), "edge-tail did not hear the publisher"  # subscribed
    for index in range(2):
        pipeline["sender"].send_multipart(_frame(1000 + index, images[index]))
    out, _ = tail.communicate(timeout=60)
    assert tail.returncode == 0, out
    assert [line.split()[2] for line in out.splitlines()] == ["f-1000", "f-1001"]

    request = pipeline["context"].socket(zmq.REQ)
    request.connect(pipeline["endpoints"]["latest"])
    request.send_multipart(encode_query(Query("cam0")))
    assert request.poll(5000)
    assert decode_reply(request.recv_multipart())["verdict"]["frame_id"] == "f-1001"  # cam0's latest
    request.close()


def _malformed(rng: np.random.Generator, good: list, index: int) -> list:
    header = json.loads(bytes(good[1]))
    header["frame_id"] = f"bad-{index}"
    kind = index % 8
    if kind == 0:
        return [good[0], json.dumps(header).encode(), bytes(good[2])[:-7]]  # truncated pixels
    if kind == 1:
        return [good[0], b'{"schema": 1, "frame_id": ', bytes(good[2])]  # bad JSON
    if kind == 2:
        header["schema"] = 1  # the previous version
    elif kind == 3:
        header["height"] = 1_000_000  # declares 480 million values
    elif kind == 4:
        header["pixel_type"] = "float64"
    elif kind == 5:
        return [b""] * int(rng.integers(1, 5))  # empty parts
    elif kind == 6:
        header["seq"] = -1
    else:
        return [good[0], json.dumps(header).encode(), bytes(good[2]) * 2]  # wrong size
    return [good[0], json.dumps(header).encode(), bytes(good[2])]


def test_malformed_messages_are_answered_and_good_frames_still_pass(pipeline, synthetic_category):
    rng = np.random.default_rng(0)
    image = read_image(synthetic_category.test[0].path)
    good_ids, bad_with_id = [], 0
    for index in range(1200):
        if index % 100 == 0:
            pipeline["sender"].send_multipart(_frame(index, image))
            good_ids.append(f"f-{index}")
            continue
        message = _malformed(rng, _frame(index, image), index)
        bad_with_id += index % 8 not in (1, 5)
        pipeline["sender"].send_multipart(message)
    verdicts, _, gaps = _collect(pipeline["subscriber"], len(good_ids) + bad_with_id)
    assert gaps == 0
    assert all(verdicts[i].verdict in (Verdict.OK, Verdict.NOK) for i in good_ids)
    errors = Counter(v.verdict for k, v in verdicts.items() if k.startswith("bad-"))
    assert all(v.camera == "cam0" for k, v in verdicts.items() if k.startswith("bad-"))
    assert errors == Counter({Verdict.ERROR: bad_with_id})
    counted = pipeline["worker"].counters
    assert sum(counted.malformed.values()) == 1200 - len(good_ids)
    assert set(counted.malformed) == {"size", "json", "schema", "shape", "dtype", "parts", "topic", "field"}
    assert all(thread.is_alive() for thread in pipeline["threads"])
