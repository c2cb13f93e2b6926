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
                  for the trigger), 8 station stopped (docs/protocol.md, `reason`)
    base+14       defects named in the verdict (NOK: at least 1)

One verdict is written with one write request (base+0..14, the alive word as it is then), so a PLC
never reads half of one.
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

from pymodbus.client import ModbusTcpClient  # the extra edge[plc]; edge-modbus-bridge says so if missing
from pymodbus.exceptions import ModbusException

from edge.bridges.base import Bridge, StationLink, bridge_main, host_port
from edge.cli_support import run_cli
from edge.client import Event
from edge.config import ModbusBridgeConfig
from edge.protocol import REASONS, Verdict, VerdictMessage

log = logging.getLogger("edge.modbus")
VERDICT_CODES = {Verdict.OK: 1, Verdict.NOK: 2, Verdict.ERROR: 3, Verdict.TIMEOUT: 4}
PART_ID_CHARS = 16
ALIVE_OFFSET = 12
RECONNECT_S = 1.0


def reason_code(verdict: VerdictMessage) -> int:
    """0 for none (OK), else the reason's position in the protocol's REASONS + 1."""
    return 0 if verdict.reason is None else REASONS.index(verdict.reason) + 1


def verdict_registers(verdict: VerdictMessage, alive: bool) -> list[int]:
    """The 15 words base+0..14 for one verdict (the alive word as it is)."""
    score = float("nan") if verdict.score is None else float(verdict.score)
    part = (verdict.part_id or "").encode("ascii", "replace")[:PART_ID_CHARS].ljust(PART_ID_CHARS, b"\0")
    return [
        VERDICT_CODES[verdict.verdict],
        verdict.seq % 65536,
        *ModbusTcpClient.convert_to_registers(score, ModbusTcpClient.DATATYPE.FLOAT32),
        *(int.from_bytes(part[i : i + 2], "big") for i in range(0, PART_ID_CHARS, 2)),
        int(alive),
        reason_code(verdict),
        min(len(verdict.defects), 65535),
    ]


def decode_registers(words: list[int]) -> dict:
    """Inverse of the map (for tests and for commissioning a PLC program)."""
    score = cast(float, ModbusTcpClient.convert_from_registers(words[2:4], ModbusTcpClient.DATATYPE.FLOAT32))
    part = b"".join(w.to_bytes(2, "big") for w in words[4:12]).rstrip(b"\0").decode("ascii")
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

    def on_verdict(self, event: Event, verdict: VerdictMessage) -> None:
        alive = bool(self.alive) and not self.stopping
        while not self._write(0, verdict_registers(verdict, alive)):
            time.sleep(RECONNECT_S)  # a verdict is never skipped: the PLC waits for this part
        self.plc_alive = alive
        self.written += 1
        self.delivered(verdict)

    def tick(self, now: float) -> None:
        """The alive word when it changes, and again every alive_timeout_s (a PLC restarted
        meanwhile gets the truth back)."""
        alive = bool(self.alive) and not self.stopping
        if (alive != self.plc_alive or now >= self.next_alive_write) and self._write(
            ALIVE_OFFSET, [int(alive)]
        ):
            self.plc_alive = alive
            self.next_alive_write = now + self.section.alive_timeout_s

    def own_samples(self) -> list[tuple]:
        return [("counter", "edge_modbus_written", "verdicts written to the PLC", self.written)]

    def close(self) -> None:
        self.stopping = True
        self.tick(time.monotonic())
        self.plc.close()
        super().close()


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bridge_main(ModbusBridge, argv, __doc__.split("\n\n")[0]))


if __name__ == "__main__":
    sys.exit(main())
