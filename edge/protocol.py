"""The wire protocol between edge processes and their clients (docs/protocol.md), version 1.

Every message is a ZeroMQ multipart message `[topic, JSON header, payload parts...]`. This module
turns messages into typed values and back, and validates everything it receives: whatever the
bytes, `decode_*` either returns a valid value or raises `ProtocolError` naming the kind of defect
(and the frame id, when the header carried one, so that the frame still gets an ERROR verdict).
It knows nothing of sockets.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
FRAME_TOPIC = b"frame"
EXPECT_TOPIC = b"expect"
TRIGGER_TOPIC = b"trigger"
MAX_FRAME_PIXELS = 64_000_000  # a 8K x 8K mono frame; larger declared shapes are refused unread
MAX_HEADER_BYTES = 64 * 1024
PIXEL_TYPES = {"uint8": np.uint8, "uint16": np.uint16}
TRIGGER_MODES = ("free_run", "triggered")


class Verdict(StrEnum):
    """What a PLC acts on (OPC UA Machine Vision vocabulary); ERROR and TIMEOUT mean reject."""

    OK = "OK"
    NOK = "NOK"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"


class ProtocolError(ValueError):
    """A received message that is not a valid version-1 message."""

    def __init__(
        self, kind: str, detail: str, frame_id: str | None = None, camera: str | None = None
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.frame_id = frame_id
        self.camera = camera


@dataclass(frozen=True)
class FrameHeader:
    """One camera frame, as capture sends it to a worker."""

    station: str
    camera: str
    seq: int  # per camera, increasing: a gap means frames were lost before the worker
    frame_id: str
    capture_utc: str  # ISO 8601, UTC
    capture_monotonic_ns: int  # capture host's monotonic clock, for latency on one host
    height: int
    width: int
    channels: int  # 1 (mono) or 3 (RGB)
    pixel_type: str = "uint8"
    trigger: str = "free_run"
    part_id: str | None = None  # triggered mode: the physical part this frame shows
    deadline_ms: float | None = None  # triggered mode: verdict due this long after capture
    schema: int = SCHEMA_VERSION

    @property
    def payload_bytes(self) -> int:
        return self.height * self.width * self.channels * np.dtype(PIXEL_TYPES[self.pixel_type]).itemsize


@dataclass(frozen=True)
class VerdictMessage:
    """One frame's outcome, published on `verdict.<station>.<camera>`."""

    station: str
    camera: str
    frame_id: str
    verdict: Verdict
    capture_utc: str
    capture_monotonic_ns: int
    part_id: str | None = None
    score: float | None = None
    threshold: float | None = None
    bank_id: str | None = None
    bank_version: str | None = None
    backend: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    defect_area_px: int = 0
    boxes: list[list[int]] = field(default_factory=list)  # [x, y, width, height] in frame pixels
    error: str | None = None
    seq: int = 0  # per topic, set by the publisher
    schema: int = SCHEMA_VERSION


def verdict_for(header: FrameHeader, verdict: Verdict, **fields: Any) -> VerdictMessage:
    """A verdict about the frame `header` describes, with its identity and capture times copied."""
    return VerdictMessage(
        station=header.station,
        camera=header.camera,
        frame_id=header.frame_id,
        part_id=header.part_id,
        capture_utc=header.capture_utc,
        capture_monotonic_ns=header.capture_monotonic_ns,
        verdict=verdict,
        **fields,
    )


def _check(condition: bool, kind: str, detail: str) -> None:
    if not condition:
        raise ProtocolError(kind, detail)


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def encode_frame(header: FrameHeader, pixels: np.ndarray) -> list[Any]:
    """Multipart frame message; the pixel part is a buffer view of `pixels` (no copy)."""
    expected = (header.height, header.width) if header.channels == 1 else (header.height, header.width, 3)
    if pixels.shape != expected or pixels.dtype != PIXEL_TYPES[header.pixel_type]:
        raise ValueError(f"pixels {pixels.shape} {pixels.dtype} do not match the header {expected}")
    body = json.dumps(asdict(header), separators=(",", ":")).encode()
    return [FRAME_TOPIC, body, memoryview(np.ascontiguousarray(pixels)).cast("B")]


def _parse_header(raw: bytes) -> dict[str, Any]:
    _check(len(raw) <= MAX_HEADER_BYTES, "header", f"header of {len(raw)} bytes is too large")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("json", f"header is not JSON: {exc}") from None
    _check(isinstance(header, dict), "json", "header is not a JSON object")
    return header


def _frame_header(raw: dict[str, Any]) -> FrameHeader:
    _check(raw.get("schema") == SCHEMA_VERSION, "schema", f"unknown schema version {raw.get('schema')!r}")
    known = set(FrameHeader.__dataclass_fields__)
    _check(not set(raw) - known, "field", f"unknown fields {sorted(set(raw) - known)[:5]}")
    for name in ("station", "camera", "frame_id", "capture_utc"):
        _check(_text(raw.get(name)), "field", f"{name} must be a non-empty string")
    for name in ("seq", "capture_monotonic_ns"):
        _check(_whole(raw.get(name)), "field", f"{name} must be a non-negative integer")
    for name in ("height", "width"):
        _check(_whole(raw.get(name), 1), "shape", f"{name} must be a positive integer")
    _check(raw.get("channels") in (1, 3), "shape", "channels must be 1 or 3")
    _check(raw.get("pixel_type", "uint8") in PIXEL_TYPES, "dtype", f"pixel type {raw.get('pixel_type')!r}")
    _check(raw.get("trigger", "free_run") in TRIGGER_MODES, "field", f"trigger {raw.get('trigger')!r}")
    part_id = raw.get("part_id")
    _check(part_id is None or _text(part_id), "field", "part_id must be a string or null")
    deadline = raw.get("deadline_ms")
    valid_deadline = (
        isinstance(deadline, int | float) and not isinstance(deadline, bool) and math.isfinite(deadline)
    )
    _check(
        deadline is None or (valid_deadline and deadline > 0),
        "field",
        "deadline_ms must be a positive number",
    )
    _check(
        raw["height"] * raw["width"] * raw["channels"] <= MAX_FRAME_PIXELS,
        "shape",
        f"declared shape {raw['height']}x{raw['width']}x{raw['channels']} is too large",
    )
    return FrameHeader(**raw)


def decode_frame(parts: list[bytes] | list[memoryview]) -> tuple[FrameHeader, np.ndarray]:
    """Validate a frame message and return its header and a (read-only) pixel array view.

    A ProtocolError carries the frame id and camera whenever the header named them validly, so the
    frame can still be answered with an ERROR verdict.
    """
    _check(len(parts) == 3, "parts", f"expected 3 parts [topic, header, pixels], got {len(parts)}")
    _check(bytes(parts[0]) == FRAME_TOPIC, "topic", f"unexpected topic {bytes(parts[0])[:32]!r}")
    raw = _parse_header(bytes(parts[1]))
    frame_id = raw.get("frame_id") if _text(raw.get("frame_id")) else None
    camera = raw.get("camera") if _text(raw.get("camera")) else None
    try:
        header = _frame_header(raw)
        payload = memoryview(parts[2])
        _check(
            payload.nbytes == header.payload_bytes,
            "size",
            f"pixel part has {payload.nbytes} bytes, header declares {header.payload_bytes}",
        )
    except ProtocolError as error:
        raise ProtocolError(error.kind, str(error).partition(": ")[2], frame_id, camera) from None
    shape = (header.height, header.width) if header.channels == 1 else (header.height, header.width, 3)
    pixels = np.frombuffer(payload, dtype=PIXEL_TYPES[header.pixel_type]).reshape(shape)
    return header, pixels


def encode_expect(header: FrameHeader) -> list[bytes]:
    """Capture → publisher: a triggered frame was sent and must get exactly one verdict."""
    return [EXPECT_TOPIC, json.dumps(asdict(header), separators=(",", ":")).encode()]


def decode_expect(parts: list[bytes]) -> FrameHeader:
    _check(len(parts) == 2, "parts", f"expected 2 parts [topic, header], got {len(parts)}")
    _check(bytes(parts[0]) == EXPECT_TOPIC, "topic", f"unexpected topic {bytes(parts[0])[:32]!r}")
    return _frame_header(_parse_header(bytes(parts[1])))


def encode_trigger(part_id: str) -> list[bytes]:
    """A software trigger (PLC bridge or MES → capture): take one frame of the part `part_id`."""
    return [TRIGGER_TOPIC, json.dumps({"schema": SCHEMA_VERSION, "part_id": part_id}).encode()]


def decode_trigger(parts: list[bytes]) -> str:
    """The part id a valid trigger message names."""
    _check(len(parts) == 2, "parts", f"expected 2 parts [topic, header], got {len(parts)}")
    _check(bytes(parts[0]) == TRIGGER_TOPIC, "topic", f"unexpected topic {bytes(parts[0])[:32]!r}")
    raw = _parse_header(bytes(parts[1]))
    _check(raw.get("schema") == SCHEMA_VERSION, "schema", f"unknown schema version {raw.get('schema')!r}")
    _check(
        not set(raw) - {"schema", "part_id"},
        "field",
        f"unknown fields {sorted(set(raw) - {'schema', 'part_id'})[:5]}",
    )
    _check(_text(raw.get("part_id")), "field", "part_id must be a non-empty string of at most 256 characters")
    return raw["part_id"]


def verdict_topic(station: str, camera: str) -> bytes:
    return f"verdict.{station}.{camera}".encode()


def encode_verdict(message: VerdictMessage) -> list[bytes]:
    body = asdict(message)
    body["verdict"] = message.verdict.value
    return [verdict_topic(message.station, message.camera), json.dumps(body, separators=(",", ":")).encode()]


def encode_result(verdict: VerdictMessage, mask_png: bytes | None) -> list[bytes]:
    """Worker (or capture) → publisher: the verdict message's two parts, then the mask PNG (empty if none)."""
    return [*encode_verdict(verdict), mask_png or b""]


def decode_verdict(parts: list[bytes]) -> VerdictMessage:
    """Validate a verdict message (what subscribers receive)."""
    _check(len(parts) == 2, "parts", f"expected 2 parts [topic, header], got {len(parts)}")
    raw = _parse_header(bytes(parts[1]))
    _check(raw.get("schema") == SCHEMA_VERSION, "schema", f"unknown schema version {raw.get('schema')!r}")
    known = set(VerdictMessage.__dataclass_fields__)
    _check(not set(raw) - known, "field", f"unknown fields {sorted(set(raw) - known)[:5]}")
    try:
        raw["verdict"] = Verdict(raw.get("verdict"))
        message = VerdictMessage(**raw)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("field", str(exc)) from None
    _check(
        bytes(parts[0]) == verdict_topic(message.station, message.camera),
        "topic",
        f"topic {bytes(parts[0])[:64]!r} does not match station and camera",
    )
    return message
