"""Changeover between parts: two recipes on one camera, the product alternating every part, against
one recipe; printed as a table.

    python bench/bench_changeover.py --parts 150 --rate 5
    python bench/bench_changeover.py --parts 150 --rate 5 --through modbus

Two banks are fitted at the defaults (MVTec bottle and screw, $EDGE_DATA_ROOT/mvtec), each with a
threshold just above its own good test frames' scores. A worker holding both recipes and a
publisher run on real ZeroMQ sockets (ipc); frames are sent as a triggered capture sends them, at
`--rate` parts per second, each naming its product, and a subscriber collects the verdicts. A run
sends bottle and screw test frames in turn (a changeover every part); the baseline sends bottle
frames only, to a worker holding bottle alone. Latency: from the frame's capture stamp to the
verdict's arrival at the subscriber. Every part must get one verdict, judged by its own recipe.

`--through modbus`: the whole station under edge-run instead (publisher, worker, a triggered
folder camera whose frames are the parts in order, and edge-modbus-bridge with the handshake),
driven by this script as a PLC through pymodbus's Modbus TCP server: per part it writes the product
number and part id, adds 1 to the trigger count, and waits for the part's verdict in the registers
and the state back to ready. Latency: from the count's write to the verdict read in the registers.
A subscriber checks each verdict's recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from edge.client import Subscriber, control_request
from edge.engine.config import EngineConfig
from edge.engine.model import PatchCore
from edge.eval.mvtec import load_category
from edge.imageio import read_image
from edge.memory import tune_allocator
from edge.pipeline.inspection import Bank, RecipeBook
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, Verdict, encode_frame

STATION = "line1"
DATA_ROOT = Path(os.environ.get("EDGE_DATA_ROOT", "/work/shared/data")) / "mvtec"


def recipe(name: str) -> tuple[Bank, list[tuple[np.ndarray, int]]]:
    category = load_category(DATA_ROOT, name)
    model = PatchCore.fit([read_image(p) for p in category.train], EngineConfig())
    test = [(read_image(s.path), s.label) for s in category.test]
    scores = model.score([image for image, _ in test])
    threshold = 1.02 * max(r.score for r, (_, label) in zip(scores, test, strict=True) if label == 0)
    print(f"{name}: bank of {model.bank.shape[0]} rows, threshold {threshold:.3f}", flush=True)
    return Bank(model, threshold, name, "v1", recipe=name), test


def run(book: RecipeBook, parts: list[tuple[str, np.ndarray, int]], rate: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="edge-changeover-"))
    endpoints = {name: f"ipc://{folder}/{name}" for name in ("frames", "results", "pub")}
    context = zmq.Context()
    publisher = Publisher(
        PublisherSettings(STATION, endpoints["results"], endpoints["pub"], heartbeat_s=0.2), context
    )
    worker = Worker(book, WorkerSettings(STATION, endpoints["frames"], endpoints["results"]), context)
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in (publisher, worker)]
    for thread in threads:
        thread.start()
    subscriber = Subscriber(endpoints["pub"], STATION, context=context)
    while (event := subscriber.receive(0.5)) is None or event.heartbeat is None:
        pass
    sender = context.socket(zmq.PUSH)
    sender.connect(endpoints["frames"])
    verdicts: dict[str, tuple[float, object]] = {}

    def collect() -> None:
        deadline = time.monotonic() + len(parts) / rate + 60
        while len(verdicts) < len(parts) and time.monotonic() < deadline:
            event = subscriber.receive(0.2)
            if event is not None and event.verdict is not None:
                verdicts[event.verdict.frame_id] = (time.monotonic_ns(), event.verdict)

    collecting = threading.Thread(target=collect)
    collecting.start()
    start = time.monotonic()
    for index, (product, image, _) in enumerate(parts):
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        header = FrameHeader(
            station=STATION, camera="cam0", seq=index, frame_id=f"part-{index}",
            capture_utc="2026-12-07T00:00:00Z", capture_monotonic_ns=time.monotonic_ns(),
            height=image.shape[0], width=image.shape[1], channels=1 if image.ndim == 2 else 3,
            trigger="triggered", part_id=f"P{index}", product=product if len(book.banks) > 1 else None,
        )  # fmt: skip
        sender.send_multipart(encode_frame(header, image))
    collecting.join()
    stop.set()
    for thread in threads:
        thread.join(10)
    sender.close()
    subscriber.socket.close()
    context.destroy(linger=0)
    latencies, wrong_recipe, wrong_verdict = [], 0, 0
    for index, (product, _, label) in enumerate(parts):
        arrived, verdict = verdicts.get(f"part-{index}", (None, None))
        if verdict is None:
            continue
        latencies.append((arrived - verdict.capture_monotonic_ns) / 1e6)
        wrong_recipe += verdict.recipe != product
        wrong_verdict += (verdict.verdict == Verdict.NOK) != bool(label)
    return {
        "parts": len(parts),
        "answered": len(verdicts),
        "wrong_recipe": wrong_recipe,
        "disagree": wrong_verdict,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def through_modbus(banks: dict[str, tuple[Bank, list]], runs: list[tuple[str, list]], rate: float) -> None:
    """Each run on a station of its own under edge-run, the PLC's side played here."""
    import asyncio
    import socket
    import subprocess

    import cv2
    import yaml
    from pymodbus.client import ModbusTcpClient
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from edge.bankstore import BankStore
    from edge.bridges.modbus import ascii_words, decode_registers
    from edge.engine.artifact import load_model, save_model

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    device = SimDevice(id=1, simdata=[SimData(0, count=100, values=0, datatype=DataType.REGISTERS)])
    loop = asyncio.new_event_loop()

    async def serve() -> None:  # the server is made inside its loop
        await ModbusTcpServer(device, address=("127.0.0.1", port)).serve_forever()

    threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True).start()
    plc = ModbusTcpClient("127.0.0.1", port=port)
    while not plc.connect():
        time.sleep(0.1)
    folder = Path(tempfile.mkdtemp(prefix="edge-changeover-modbus-"))
    numbers = {name: number for number, name in enumerate(banks, 1)}
    for name, (bank, _) in banks.items():
        model = load_model(save_model(bank.model, folder / f"{name}.edge"))
        model.calibrate({"threshold": float(bank.threshold), "version": "bench"})
        BankStore(folder / name).publish(model)
    print(f"{'run':<34} {'answered':>9} {'wrong recipe':>13} {'verdict != label':>17} {'p50':>7} {'p99':>7}  "
          "(ms from the PLC's trigger to the verdict in its registers)")  # fmt: skip
    for run, (name, parts) in enumerate(runs):
        work = folder / f"run{run}"
        (work / "parts").mkdir(parents=True)
        for index, (_, image, _) in enumerate(parts):
            cv2.imwrite(str(work / "parts" / f"{index:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        products = sorted({product for product, _, _ in parts}, key=list(banks).index)
        ipc = {k: f"ipc://{work}/{k}" for k in ("frames", "results", "pub", "latest", "control", "trig")}
        bound = {k: ipc[k] for k in ("frames", "results", "latest", "control")} | {"publish": ipc["pub"]}
        config = {
            "station": STATION,
            "recipes": [
                {"name": n, "number": numbers[n], "bank": {"path": str(folder / n)}} for n in products
            ],
            "endpoints": bound,
            "cameras": [{"name": "cam0", "source": {"kind": "folder", "path": str(work / "parts")},
                         "trigger": "triggered", "trigger_endpoint": ipc["trig"], "deadline_ms": 5000}],
            "publisher": {"heartbeat_s": 0.2},
            "bridges": {"modbus": {"plc": f"127.0.0.1:{port}", "base": 0, "handshake_camera": "cam0"}},
        }  # fmt: skip
        (work / "station.yaml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "edge.services.supervisor", str(work / "station.yaml")]
        log = (work / "station.log").open("w")
        station = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        context = zmq.Context()
        subscriber = Subscriber(ipc["pub"], STATION, context=context)
        try:
            give_up = time.monotonic() + 120
            while plc.read_holding_registers(12, count=1).registers[0] != 1:  # vision alive
                if time.monotonic() > give_up or station.poll() is not None:
                    raise SystemExit(f"the station did not come up: {work / 'station.log'}")
                time.sleep(0.1)
            while control_request(ipc["control"], "status", 1.0) is None:  # the worker has loaded its banks
                if time.monotonic() > give_up or station.poll() is not None:
                    raise SystemExit(f"the worker did not come up: {work / 'station.log'}")
            start_count = plc.read_holding_registers(15, count=1).registers[0]
            while (
                plc.read_holding_registers(25, count=1).registers[0] != start_count
            ):  # the bridge is polling
                time.sleep(0.05)
            latencies, answered = [], 0
            started = time.monotonic()
            for index, (product, _, _) in enumerate(parts):
                time.sleep(max(0.0, started + index / rate - time.monotonic()))
                part, count = f"P{index:05d}", (start_count + index + 1) % 65536
                plc.write_registers(16, [numbers[product], *ascii_words(part)])
                sent = time.monotonic()
                plc.write_registers(15, [count])
                deadline = sent + 10
                while time.monotonic() < deadline:
                    words = plc.read_holding_registers(0, count=28).registers
                    if decode_registers(words)["part_id"] == part and words[25] == count and words[26] == 0:
                        latencies.append((time.monotonic() - sent) * 1000)
                        answered += 1
                        break
                    time.sleep(0.001)
            verdicts: dict[str, object] = {}
            until = time.monotonic() + 5
            while len(verdicts) < len(parts) and time.monotonic() < until:
                event = subscriber.receive(0.2)
                if event is not None and event.verdict is not None:
                    verdicts[event.verdict.part_id] = event.verdict
        finally:
            station.terminate()
            station.wait(60)
            log.close()
            subscriber.socket.close()
            context.destroy(linger=0)
        wrong = sum(
            getattr(verdicts.get(f"P{i:05d}"), "recipe", None) != product
            for i, (product, _, _) in enumerate(parts)
        )
        disagree = sum(
            (getattr(verdicts.get(f"P{i:05d}"), "verdict", None) == Verdict.NOK) != bool(label)
            for i, (_, _, label) in enumerate(parts)
        )
        row = f"{answered}/{len(parts)}"
        print(f"{name:<34} {row:>9} {wrong:>13} {disagree:>17} {np.percentile(latencies, 50):>7.1f} "
              f"{np.percentile(latencies, 99):>7.1f}", flush=True)  # fmt: skip
    plc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=150)
    parser.add_argument("--rate", type=float, default=5.0, help="parts per second")
    parser.add_argument(
        "--through", choices=("worker", "modbus"), default="worker",
        help="frames straight to a worker (default), or a station under edge-run driven by a PLC over Modbus",
    )  # fmt: skip
    args = parser.parse_args()
    tune_allocator()
    bottle, bottle_test = recipe("bottle")
    screw, screw_test = recipe("screw")
    single = [("bottle", *bottle_test[i % len(bottle_test)]) for i in range(args.parts)]
    tests = {"bottle": bottle_test, "screw": screw_test}
    alternating = [
        (product, *tests[product][(i // 2) % len(tests[product])])
        for i, product in enumerate(["bottle", "screw"] * (args.parts // 2))
    ]
    if args.through == "modbus":
        print(f"{args.parts} parts at {args.rate:g}/s, triggered by a PLC over the Modbus handshake")
        runs = [("one recipe (bottle)", single), ("two recipes, changeover every part", alternating)]
        through_modbus({"bottle": (bottle, bottle_test), "screw": (screw, screw_test)}, runs, args.rate)
        return 0
    print(f"{args.parts} parts at {args.rate:g}/s; latency ms from capture to the subscriber")
    print(f"{'run':<34} {'answered':>9} {'wrong recipe':>13} {'verdict != label':>17} {'p50':>7} {'p99':>7}")
    for name, book, parts in (
        ("one recipe (bottle)", RecipeBook([bottle]), single),
        ("two recipes, changeover every part", RecipeBook([bottle, screw]), alternating),
    ):
        row = run(book, parts, args.rate)
        answered = f"{row['answered']}/{row['parts']}"
        print(f"{name:<34} {answered:>9} {row['wrong_recipe']:>13} {row['disagree']:>17} "
              f"{row['p50']:>7.1f} {row['p99']:>7.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
