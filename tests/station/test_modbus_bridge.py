"""The PLC bridge end to end: publisher → edge-modbus-bridge → pymodbus's own Modbus TCP server on
loopback; the registers hold each verdict, and the alive bit drops when the station's heartbeats stop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import zmq
from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from station_kit import wait_until

from edge.bridges.base import StationLink
from edge.bridges.modbus import ALIVE_OFFSET, ModbusBridge, ascii_words, decode_registers
from edge.config import MODBUS_OFFSETS, ModbusBridgeConfig
from edge.imageio import read_image
from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.inspection import Bank, RecipeBook
from edge.pipeline.judgement import RecipeRegions
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.sources import SyntheticSource
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import Verdict, VerdictMessage, encode_result
from edge.recipe import Recipe, Region, rect_corners

BASE = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def plc():
    """pymodbus's Modbus TCP server on loopback, in its own event loop thread."""
    port = free_port()
    device = SimDevice(id=1, simdata=[SimData(0, count=200, values=0, datatype=DataType.REGISTERS)])
    loop = asyncio.new_event_loop()
    servers = []

    async def serve() -> None:
        servers.append(ModbusTcpServer(device, address=("127.0.0.1", port)))
        await servers[0].serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    reader = ModbusTcpClient("127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while not reader.connect():
        assert time.monotonic() < deadline, "the Modbus server did not start"
        time.sleep(0.1)

    def registers() -> list[int]:
        return reader.read_holding_registers(BASE, count=MODBUS_OFFSETS).registers

    yield port, registers
    reader.close()
    asyncio.run_coroutine_threadsafe(servers[0].shutdown(), loop).result(10)
    thread.join(10)


def verdict(part: str, outcome: Verdict, score: float | None) -> VerdictMessage:
    why = {Verdict.NOK: "defect", Verdict.TIMEOUT: "deadline"}.get(outcome)
    defects = [{"region": "seal", "area_px": 40, "box": [1, 2, 8, 5], "peak": 3.5, "threshold": 1.0}]
    return VerdictMessage(
        "s", "cam", f"frame-{part}", outcome, "t", 0, part_id=part, score=score, threshold=1.0,
        reason=why, defects=defects if why == "defect" else [], region="seal" if why == "defect" else None,
    )  # fmt: skip


def test_verdicts_reach_the_plc_registers_and_alive_drops(tmp_path, plc):
    port, registers = plc
    context = zmq.Context()
    publisher = Publisher(
        PublisherSettings("s", f"ipc://{tmp_path}/results", f"ipc://{tmp_path}/pub", heartbeat_s=0.2), context
    )
    stop_publisher = threading.Event()
    publishing = threading.Thread(target=publisher.run, args=(stop_publisher,))
    publishing.start()
    bridge = ModbusBridge(
        StationLink("s", f"ipc://{tmp_path}/pub"),
        ModbusBridgeConfig(plc=f"127.0.0.1:{port}", base=BASE, alive_timeout_s=1.0),
    )
    stop_bridge = threading.Event()
    bridging = threading.Thread(target=bridge.run, args=(stop_bridge,))
    bridging.start()
    worker = context.socket(zmq.PUSH)
    worker.connect(f"ipc://{tmp_path}/results")

    deadline = time.monotonic() + 10
    while registers()[ALIVE_OFFSET] != 1:  # heartbeats heard: vision alive
        assert time.monotonic() < deadline, "the alive bit never rose"
        time.sleep(0.05)
    seen = []
    for part, outcome, score in (
        ("P-0001", Verdict.OK, 0.42),
        ("P-0002", Verdict.NOK, 3.5),
        ("P-0003", Verdict.TIMEOUT, None),
    ):
        worker.send_multipart(encode_result(verdict(part, outcome, score), None))
        deadline = time.monotonic() + 10
        while decode_registers(registers())["part_id"] != part:
            assert time.monotonic() < deadline, f"{part} never reached the PLC"
            time.sleep(0.02)
        seen.append(decode_registers(registers()))
    stop_publisher.set()  # the station goes quiet: no more heartbeats
    publishing.join(10)
    silent_at = time.monotonic()
    while registers()[ALIVE_OFFSET] != 0:
        assert time.monotonic() - silent_at < 5, "the alive bit did not drop"
        time.sleep(0.05)
    dropped_after = time.monotonic() - silent_at
    stop_bridge.set()
    bridging.join(10)
    worker.close()
    context.destroy(linger=0)

    assert [(s["code"], s["seq"], s["part_id"], s["reason"], s["defects"], s["alive"]) for s in seen] == [
        (1, 1, "P-0001", 0, 0, 1),
        (2, 2, "P-0002", 1, 1, 1),  # reason 1: a defect
        (4, 3, "P-0003", 2, 0, 1),  # reason 2: the deadline passed
    ]
    assert seen[0]["score"] == pytest.approx(0.42, rel=1e-6) and seen[1]["score"] == pytest.approx(3.5)
    assert seen[2]["score"] is None
    assert 0.5 < dropped_after < 3.0  # alive timeout 1 s after the last heartbeat (0.2 s period)
    assert bridge.written == 3
    samples = {name: value for _, name, _, value in bridge.samples()}
    assert samples["edge_modbus_written"] == 3 and samples["edge_modbus_lost_verdicts"] == 0


def test_the_plc_triggers_parts_by_the_handshake_and_unknown_products_are_refused(
    tmp_path, plc, fitted_model, synthetic_category
):
    """A PLC driving the station the way PLC programmers know it: it writes part id and product
    number, adds 1 to the trigger count, sees busy, then the part's verdict and ready. The product
    changes every part; a number that is no recipe's, and an empty part id, are refused with their
    code, and no part is triggered for them. Real parts: capture (synthetic camera, triggered),
    worker with two recipes, publisher, the bridge and pymodbus's server."""
    port, registers = plc
    good = [read_image(s.path) for s in synthetic_category.test if s.label == 0]
    threshold = 1.02 * max(r.score for r in fitted_model.score(good))
    corner = Recipe(
        "corner", (160, 160), (Region("corner", "inspect", rect_corners(0, 0, 16, 16), (0, 0, 16, 16)),)
    )
    book = RecipeBook([
        Bank(fitted_model, threshold, "b", "v1", recipe="whole"),
        Bank(fitted_model, threshold, "b", "v1", recipe="corner", regions=RecipeRegions(corner, threshold)),
    ])  # fmt: skip
    ipc = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub", "trig")}
    context = zmq.Context()
    publisher = Publisher(PublisherSettings("s", ipc["results"], ipc["pub"], heartbeat_s=0.2), context)
    worker = Worker(book, WorkerSettings("s", ipc["frames"], ipc["results"]), context)
    capture = Capture(
        SyntheticSource(160, defect_rate=0.5, seed=3),
        CaptureSettings("s", "cam0", ipc["frames"], trigger="triggered", deadline_ms=5000,
                        results_endpoint=ipc["results"], trigger_endpoint=ipc["trig"]),
        context,
    )  # fmt: skip
    bridge = ModbusBridge(
        StationLink("s", ipc["pub"], triggers={"cam0": ipc["trig"]}, products={1: "whole", 2: "corner"}),
        ModbusBridgeConfig(plc=f"127.0.0.1:{port}", base=BASE, handshake_camera="cam0"),
    )
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (publisher, worker, capture, bridge)]
    for thread in threads:
        thread.start()
    writer = ModbusTcpClient("127.0.0.1", port=port)
    assert writer.connect()

    def request(count: int, product: int, part: str) -> list[int]:
        writer.write_registers(BASE + 16, [product, *ascii_words(part)])
        writer.write_registers(BASE + 15, [count % 65536])
        deadline = time.monotonic() + 10
        while (answer := registers()[25:28])[0] != count % 65536:
            assert time.monotonic() < deadline, f"request {count} was never taken"
            time.sleep(0.005)
        return answer

    def answered(part: str) -> bool:  # the part's verdict written, and the state back to ready
        words = registers()
        return decode_registers(words)["part_id"] == part and words[26] == 0

    try:
        wait_until(lambda: registers()[ALIVE_OFFSET] == 1, 10, "the station's heartbeats at the bridge")
        wait_until(lambda: bridge.taken is not None, 10, "the bridge reading the PLC's trigger count")
        results = {}
        for n in range(1, 9):
            part = f"PLC-{n:03d}"
            state = request(n, 1 + n % 2, part)[1]
            assert state in (1, 0)  # busy (or already answered)
            wait_until(lambda part=part: answered(part), 15, f"{part}'s verdict and ready")
            results[part] = decode_registers(registers())
        refused_number = request(9, 7, "PLC-X")
        refused_part = request(10, 1, "")
        written = bridge.written
        time.sleep(0.3)  # no verdict follows a refused request
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        writer.close()
        capture.close()
        context.destroy(linger=0)
    assert all(r["code"] in (1, 2) and r["reason"] in (0, 1) for r in results.values())
    assert refused_number == [9, 2, 3] and refused_part == [10, 2, 5]
    assert bridge.written == written == 8 and bridge.refused == 2
