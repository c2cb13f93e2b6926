"""edge-modbus-bridge: a station's verdicts into a PLC's holding registers over Modbus TCP.

Register map, from --base (default 0), 16-bit words, big-endian word order:

    base+0        verdict code: 0 none yet, 1 OK, 2 NOK, 3 ERROR, 4 TIMEOUT (a PLC rejects on 2-4)
    base+1        verdict sequence number, modulo 65536 (changes with every verdict: the PLC's "new")
    base+2..3     score as float32 (NaN when there is none)
    base+4..11    part id, ASCII, 16 characters, NUL-padded (longer ids are cut; the frame id is not sent)
    base+12       vision alive: 1 while the station's heartbeats arrive, 0 once none came for
                  --alive-timeout seconds (also when the bridge starts and has heard nothing)
    base+13       reason code: 0 OK; 1 defect, 2 deadline passed, 3 unknown recipe, 4 frame refused
                  (its size or shape), 5 malformed frame, 6 inspection failed, 7 camera (no frame
                  for the trigger), 8 station stopped, 9 not registered (docs/protocol.md, `reason`)
    base+14       defects named in the verdict (NOK: at least 1)

One verdict is written with one write request (base+0..14, the alive word as it is then), so a PLC
never reads half of one.

The handshake (with `handshake_camera`, from the station file): the PLC triggers parts itself, as
with a commercial vision system, instead of sending ZeroMQ triggers.

    base+15       PLC → vision: trigger count; the PLC adds 1 (mod 65536) to trigger one part
    base+16       PLC → vision: product number (a recipe's `number`; 0: the station's first recipe)
    base+17..24   PLC → vision: part id, ASCII, 16 characters, NUL-padded (written before the count)
    base+25       vision → PLC: the trigger count taken (equals base+15 once the request is handled)
    base+26       vision → PLC: state: 0 ready, 1 busy (the part is triggered, its verdict not yet
                  written), 2 refused (the request was not triggered; why in base+27)
    base+27       vision → PLC: refusal code: 3 unknown product number, 5 no printable part id,
                  7 the camera's capture takes no triggers (not running); 0 otherwise

Timing: the PLC writes part id and product, then adds 1 to the count; within a poll (10 ms) the
bridge triggers the part and writes [count, 1, 0]; when the part's verdict is written (base+1
changes, base+4..11 hold its part id) the state returns to 0 and the PLC may trigger the next.
Requests the PLC made before the bridge started are not served (the count is taken as it is).
Verdicts are never skipped: while the PLC is unreachable the bridge waits for it, and the station
keeps what follows. With `state` (and the station's query endpoint) a restarted bridge writes the
verdicts published meanwhile, in order, before live ones.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import cast

import zmq
from pymodbus.client import ModbusTcpClient  # the extra edge[plc]; edge-modbus-bridge says so if missing
from pymodbus.exceptions import ModbusException

from edge.bridges.base import Bridge, StationLink, bridge_main, host_port, trigger_socket
from edge.cli_support import run_cli
from edge.client import Event
from edge.config import ModbusBridgeConfig
from edge.protocol import REASONS, Verdict, VerdictMessage, encode_trigger

log = logging.getLogger("edge.modbus")
VERDICT_CODES = {Verdict.OK: 1, Verdict.NOK: 2, Verdict.ERROR: 3, Verdict.TIMEOUT: 4}
PART_ID_CHARS = 16
ALIVE_OFFSET = 12
RECONNECT_S = 1.0
REQUEST_OFFSET, REQUEST_WORDS = 15, 10  # count, product number, part id
ANSWER_OFFSET = 25  # count taken, state, refusal code
READY, BUSY, REFUSED = 0, 1, 2
UNKNOWN_PRODUCT = REASONS.index("recipe") + 1
NO_PART_ID = REASONS.index("malformed") + 1
NO_CAPTURE = REASONS.index("camera") + 1
HANDSHAKE_POLL_S = 0.01


def reason_code(verdict: VerdictMessage) -> int:
    """0 for none (OK), else the reason's position in the protocol's REASONS + 1."""
    return 0 if verdict.reason is None else REASONS.index(verdict.reason) + 1


def verdict_registers(verdict: VerdictMessage, alive: bool) -> list[int]:
    """The 15 words base+0..14 for one verdict (the alive word as it is)."""
    score = float("nan") if verdict.score is None else float(verdict.score)
    return [
        VERDICT_CODES[verdict.verdict],
        verdict.seq % 65536,
        *ModbusTcpClient.convert_to_registers(score, ModbusTcpClient.DATATYPE.FLOAT32),
        *ascii_words(verdict.part_id or ""),
        int(alive),
        reason_code(verdict),
        min(len(verdict.defects), 65535),
    ]


def ascii_words(text: str, chars: int = PART_ID_CHARS) -> list[int]:
    """Text as NUL-padded ASCII words, big-endian (the part id's layout)."""
    data = text.encode("ascii", "replace")[:chars].ljust(chars, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, chars, 2)]


def words_text(words: list[int]) -> str | None:
    """NUL-padded ASCII words as text; None when they are not printable ASCII."""
    data = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def decode_registers(words: list[int]) -> dict:
    """Inverse of the map (for tests and for commissioning a PLC program)."""
    score = cast(float, ModbusTcpClient.convert_from_registers(words[2:4], ModbusTcpClient.DATATYPE.FLOAT32))
    part = words_text(words[4:12]) or ""
    return {
        "code": words[0], "seq": words[1], "score": None if math.isnan(score) else score, "part_id": part,
        "alive": words[12], "reason": words[13], "defects": words[14],
    }  # fmt: skip


class ModbusBridge(Bridge):
    name = "modbus"
    section_type = ModbusBridgeConfig
    section: ModbusBridgeConfig

    def __init__(self, link: StationLink, section: ModbusBridgeConfig) -> None:
        self.plc_address = host_port(section.plc, 502)
        self.plc = ModbusTcpClient(self.plc_address[0], port=self.plc_address[1], timeout=2)
        self.written = 0
        self.plc_alive: bool | None = None  # what the PLC's alive word says
        self.next_alive_write = 0.0
        self.stopping = False
        self.trigger_socket: zmq.Socket | None = None
        self.taken: int | None = None  # the PLC's trigger count last handled
        self.pending: str | None = None  # the part triggered through the handshake, awaiting its verdict
        self.refused = 0
        if section.handshake_camera is not None:
            key = "bridges.modbus.handshake_camera"
            self.trigger_socket = trigger_socket(link, section.handshake_camera, key)
            self.poll_s = HANDSHAKE_POLL_S
        super().__init__(link, section)

    def _write(self, offset: int, words: list[int]) -> bool:
        try:
            if not self.plc.connected and not self.plc.connect():
                return False
            reply = self.plc.write_registers(
                self.section.base + offset, words, device_id=self.section.device_id
            )
            if reply.isError():
                self.log.error("PLC refused the write at %d: %s", self.section.base + offset, reply)
                return False
            return True
        except ModbusException as exc:
            self.log.warning("PLC %s:%d unreachable: %s", *self.plc_address, exc)
            self.plc.close()
            return False

    def _read(self, offset: int, count: int) -> list[int] | None:
        try:
            if not self.plc.connected and not self.plc.connect():
                return None
            reply = self.plc.read_holding_registers(
                self.section.base + offset, count=count, device_id=self.section.device_id
            )
            if reply.isError():
                self.log.error("PLC refused the read at %d: %s", self.section.base + offset, reply)
                return None
            return list(reply.registers)
        except ModbusException as exc:
            self.log.warning("PLC %s:%d unreachable: %s", *self.plc_address, exc)
            self.plc.close()
            return None

    def on_verdict(self, event: Event, verdict: VerdictMessage) -> None:
        alive = bool(self.alive) and not self.stopping
        while not self._write(0, verdict_registers(verdict, alive)):
            time.sleep(RECONNECT_S)  # a verdict is never skipped: the PLC waits for this part
        self.plc_alive = alive
        self.written += 1
        if self.pending is not None and verdict.part_id == self.pending and self.taken is not None:
            self.pending = None
            self._write(ANSWER_OFFSET, [self.taken, READY, 0])
        self.delivered(verdict)

    def _serve_plc(self) -> None:
        """The handshake: a new trigger count from the PLC becomes a trigger, or a refusal."""
        words = self._read(REQUEST_OFFSET, REQUEST_WORDS)
        if words is None:
            return
        count = words[0]
        if self.taken is None:  # at start, what the PLC asked before is not served
            self.taken = count
            self._write(ANSWER_OFFSET, [count, READY, 0])
            return
        if count == self.taken:
            return
        self.taken = count
        number, part = words[1], words_text(words[2:])
        product = None if number == 0 else self.link.products.get(number)
        if number and product is None:
            known = ", ".join(f"{n} {name}" for n, name in sorted(self.link.products.items())) or "none"
            self._refuse(count, UNKNOWN_PRODUCT, f"product number {number} is no recipe's (recipes: {known})")
        elif not part:
            self._refuse(count, NO_PART_ID, "the part id in base+17..24 is empty or not printable ASCII")
        else:
            assert self.trigger_socket is not None
            try:
                self.trigger_socket.send_multipart(encode_trigger(part, product), flags=zmq.NOBLOCK)
            except zmq.Again:
                self._refuse(
                    count, NO_CAPTURE, f"camera {self.section.handshake_camera}'s capture takes no triggers"
                )
                return
            self.pending = part
            self._write(ANSWER_OFFSET, [count, BUSY, 0])

    def _refuse(self, count: int, code: int, why: str) -> None:
        self.refused += 1
        self.log.error("PLC request %d refused: %s", count, why)
        self._write(ANSWER_OFFSET, [count, REFUSED, code])

    def tick(self, now: float) -> None:
        """The alive word when it changes, and again every alive_timeout_s (a PLC restarted
        meanwhile gets the truth back)."""
        alive = bool(self.alive) and not self.stopping
        if (alive != self.plc_alive or now >= self.next_alive_write) and self._write(
            ALIVE_OFFSET, [int(alive)]
        ):
            self.plc_alive = alive
            self.next_alive_write = now + self.section.alive_timeout_s
        if self.trigger_socket is not None and not self.stopping:
            self._serve_plc()

    def own_samples(self) -> list[tuple]:
        return [
            ("counter", "edge_modbus_written", "verdicts written to the PLC", self.written),
            (
                "counter",
                "edge_modbus_refused",
                "handshake requests refused (their code to the PLC)",
                self.refused,
            ),
        ]

    def close(self) -> None:
        self.stopping = True
        self.tick(time.monotonic())
        self.plc.close()
        if self.trigger_socket is not None:
            self.trigger_socket.close()
        super().close()


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bridge_main(ModbusBridge, argv, __doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main())
