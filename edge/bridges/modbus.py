"""edge-modbus-bridge: a station's verdicts into a PLC's holding registers over Modbus TCP.

Register map, from --base (default 0), 16-bit words, big-endian word order:

    base+0        verdict code: 0 none yet, 1 OK, 2 NOK, 3 ERROR, 4 TIMEOUT (a PLC rejects on 2-4)
    base+1        verdict sequence number, modulo 65536 (changes with every verdict: the PLC's "new")
    base+2..3     score as float32 (NaN when there is none)
    base+4..11    part id, ASCII, 16 characters, NUL-padded (longer ids are cut; the frame id is not sent)
    base+12       vision alive: 1 while the station's heartbeats arrive, 0 once none came for
                  --alive-timeout seconds (also when the bridge starts and has heard nothing)

One verdict is written with one write request (base+0..11), so a PLC never reads half of one.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass

try:  # the optional extra edge[plc]
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ModbusException
except ImportError:  # pragma: no cover - exercised where the extra is missing
    ModbusTcpClient = None

from edge.cli_support import run_cli, setup_logging
from edge.client import Subscriber
from edge.errors import UsageError
from edge.protocol import Verdict, VerdictMessage
from edge.security import CurveClient
from edge.services.sdnotify import stop_on_signals

log = logging.getLogger("edge.modbus")
VERDICT_CODES = {Verdict.OK: 1, Verdict.NOK: 2, Verdict.ERROR: 3, Verdict.TIMEOUT: 4}
PART_ID_CHARS = 16
ALIVE_OFFSET = 12
RECONNECT_S = 1.0
SILENCE_LOG_S = 60.0


@dataclass(frozen=True)
class BridgeSettings:
    station_endpoint: str
    station: str
    plc_host: str
    plc_port: int = 502
    device_id: int = 1
    base: int = 0
    camera: str | None = None  # only this camera's verdicts (default: all)
    alive_timeout_s: float = 3.0
    curve: CurveClient | None = None


def verdict_registers(verdict: VerdictMessage) -> list[int]:
    """The 12 words base+0..11 for one verdict."""
    score = float("nan") if verdict.score is None else float(verdict.score)
    part = (verdict.part_id or "").encode("ascii", "replace")[:PART_ID_CHARS].ljust(PART_ID_CHARS, b"\0")
    return [
        VERDICT_CODES[verdict.verdict],
        verdict.seq % 65536,
        *ModbusTcpClient.convert_to_registers(score, ModbusTcpClient.DATATYPE.FLOAT32),
        *(int.from_bytes(part[i : i + 2], "big") for i in range(0, PART_ID_CHARS, 2)),
    ]


def decode_registers(words: list[int]) -> dict:
    """Inverse of the map (for tests and for commissioning a PLC program)."""
    score = ModbusTcpClient.convert_from_registers(words[2:4], ModbusTcpClient.DATATYPE.FLOAT32)
    part = b"".join(w.to_bytes(2, "big") for w in words[4:12]).rstrip(b"\0").decode("ascii")
    return {"code": words[0], "seq": words[1], "score": None if math.isnan(score) else score, "part_id": part}


class Bridge:
    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.plc = ModbusTcpClient(settings.plc_host, port=settings.plc_port, timeout=2)
        self.subscriber = Subscriber(
            settings.station_endpoint, settings.station, topics=("verdict", "heartbeat"), curve=settings.curve
        )
        self.last_heard = -math.inf
        self.alive: bool | None = None
        self.written = 0
        self.next_alive_write = 0.0
        self.next_silence_log = time.monotonic() + self.settings.alive_timeout_s

    def _write(self, offset: int, words: list[int]) -> bool:
        try:
            if not self.plc.connected and not self.plc.connect():
                return False
            reply = self.plc.write_registers(
                self.settings.base + offset, words, device_id=self.settings.device_id
            )
            if reply.isError():
                log.error("PLC refused the write at %d: %s", self.settings.base + offset, reply)
                return False
            return True
        except ModbusException as exc:
            log.warning("PLC %s:%d unreachable: %s", self.settings.plc_host, self.settings.plc_port, exc)
            self.plc.close()
            return False

    def _set_alive(self, alive: bool, now: float) -> None:
        """Write the alive word when it changes, and again every --alive-timeout seconds (a PLC
        restarted meanwhile gets the truth back); while the station is silent, say so every minute."""
        due = now >= self.next_alive_write
        if (alive != self.alive or due) and self._write(ALIVE_OFFSET, [int(alive)]):
            if alive != self.alive and (self.alive is not None or not alive):
                log.log(logging.INFO if alive else logging.WARNING, "vision alive: %s", alive)
            self.alive = alive
            self.next_alive_write = now + self.settings.alive_timeout_s
        if not alive and now >= self.next_silence_log:
            silent = (
                "since the bridge started"
                if math.isinf(self.last_heard)
                else f"for {now - self.last_heard:.0f} s"
            )
            log.warning("nothing heard from station %s %s", self.settings.station, silent)
            self.next_silence_log = now + SILENCE_LOG_S

    def step(self, timeout_s: float = 0.2) -> None:
        event = self.subscriber.receive(timeout_s)
        now = time.monotonic()
        if event is not None:
            self.last_heard = now
            verdict = event.verdict
            if verdict is not None and self.settings.camera in (None, verdict.camera):
                if event.gap:
                    log.warning("%d verdict(s) lost on %s before seq %d", event.gap, event.topic, event.seq)
                if event.restart:
                    log.warning("the station's publisher restarted (epoch %d)", event.epoch)
                while not self._write(0, verdict_registers(verdict)):
                    time.sleep(RECONNECT_S)  # a verdict is never skipped: the PLC waits for this part
                self.written += 1
        self._set_alive(now - self.last_heard < self.settings.alive_timeout_s, now)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
        self._set_alive(False, time.monotonic())
        self.close()

    def close(self) -> None:
        self.subscriber.socket.close()
        self.plc.close()


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-modbus-bridge",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 stopped; 2 bad usage; 6 bad key file; 130 interrupted",
    )
    parser.add_argument("station_endpoint", help="the station's PUB endpoint, e.g. tcp://station:5556")
    parser.add_argument("--station", required=True, help="station name (topics verdict.<station>.*)")
    parser.add_argument("--plc", required=True, help="PLC address HOST[:PORT] (port 502 by default)")
    parser.add_argument("--device-id", type=int, default=1, help="Modbus unit/device id (default 1)")
    parser.add_argument("--base", type=int, default=0, help="first holding register (default 0)")
    parser.add_argument("--camera", help="only this camera's verdicts")
    parser.add_argument(
        "--alive-timeout", type=float, default=3.0, help="seconds without heartbeats (default 3)"
    )
    parser.add_argument("--client-key", help="CURVE: this bridge's .key_secret")
    parser.add_argument("--server-key", help="CURVE: the publisher's public .key")
    args = parser.parse_args(argv)
    setup_logging()
    if ModbusTcpClient is None:
        raise UsageError("the Modbus bridge needs pymodbus: pip install 'edge[plc]'")
    host, _, port = args.plc.partition(":")
    if not host or (port and not port.isdigit()) or not 0 <= args.base <= 65535 - ALIVE_OFFSET:
        raise UsageError("--plc must be HOST or HOST:PORT and --base a register address")
    if (args.client_key is None) != (args.server_key is None):
        raise UsageError("CURVE needs both --client-key and --server-key")
    settings = BridgeSettings(
        station_endpoint=args.station_endpoint,
        station=args.station,
        plc_host=host,
        plc_port=int(port or 502),
        device_id=args.device_id,
        base=args.base,
        camera=args.camera,
        alive_timeout_s=args.alive_timeout,
        curve=CurveClient(args.client_key, args.server_key) if args.client_key else None,
    )
    stop = stop_on_signals()
    Bridge(settings).run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
