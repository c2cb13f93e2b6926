"""The wire protocol between edge processes and their clients (docs/protocol.md), version 3.

Every message is a ZeroMQ multipart message `[topic, JSON header, payload parts...]`. This module
turns every kind of message into typed values and back — frame, trigger, expect, result, verdict,
mask, heartbeat, the latest/replay query and worker control — and both ends use it. Decoding is
total: whatever the bytes, `decode_*` either returns a valid value or raises `ProtocolError` naming
the kind of defect (and the frame id, when the header carried one, so that the frame still gets an
ERROR verdict). Encoding refuses what a decoder would refuse (NaN, wrong types, bad names), so a
process never puts on the wire what its peer must reject. It needs numpy and nothing of the
station: clients (MES, PLC bridges) install it without torch.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import numpy as np

SCHEMA_VERSION = 3
READABLE_STORED_VERSIONS = (2, 3)  # what a journal or replay store may hold: 3 added optional fields only
FRAME_TOPIC = b"frame"
EXPECT_TOPIC = b"expect"
TRIGGER_TOPIC = b"trigger"
READY_TOPIC = b"ready"  # worker → broker (worker pool): credit, progress, bank
RELOAD_TOPIC = b"reload"  # broker → worker: load the bank store's active version
REFUSED_TOPIC = b"refused"  # broker → worker: no frames for you, and why
SELECT_TOPIC = b"select"  # broker → worker: the recipe per camera for frames that name no product
CAMERA_TOPIC = b"camera"  # capture → publisher: the camera's state
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # station and camera names: topics, file names, metric labels
NAME_MEANING = "1 to 64 letters, digits, '_' or '-'"
MAX_PIXEL_BYTES = 64 * 1024 * 1024  # a frame's pixel part: 8K x 8K mono; larger declared shapes are refused
MAX_HEADER_BYTES = 64 * 1024
MAX_TEXT = 256  # ids, versions, backend names
MAX_ERROR_TEXT = 2048
MAX_BOXES = 256  # regions listed in a verdict; the largest ones when a mask has more
MAX_DEFECTS = 64  # defects named in a verdict; the strongest ones when there are more
MAX_LATENCY_STAGES = 32
PIXEL_TYPES = {"uint8": np.uint8, "uint16": np.uint16}
TRIGGER_MODES = ("free_run", "triggered")
CONTROL_COMMANDS = ("status", "reload", "select")
# a camera's state (docs/protocol.md): silent is the publisher's word for a capture that stopped reporting
CAMERA_STATES = ("starting", "streaming", "reconnecting", "gone", "ended", "silent")
# why a verdict is not OK (docs/protocol.md); a PLC's reason code is the position here + 1
REASONS = (
    "defect",
    "deadline",
    "recipe",
    "frame",
    "malformed",
    "inspection",
    "camera",
    "stopped",
    "registration",
)
MAX_CAMERAS = 256
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NAME = re.compile(NAME_PATTERN)


class Verdict(StrEnum):
    """What a PLC acts on (OPC UA Machine Vision vocabulary); ERROR and TIMEOUT mean reject."""

    OK = "OK"
    NOK = "NOK"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"


# verdicts that come with a mask message (the thresholded anomaly map); ERROR and TIMEOUT have none
MASKED_VERDICTS = (Verdict.OK, Verdict.NOK)


class ProtocolError(ValueError):
    """A message that is not a valid message of this version (received, or about to be sent)."""

    def __init__(
        self, kind: str, detail: str, frame_id: str | None = None, camera: str | None = None
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.frame_id = frame_id
        self.camera = camera


# ---- value checks ---------------------------------------------------------------------------------
def is_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _text(value: Any, limit: int = MAX_TEXT) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def _whole(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low  # not bool, not 1.0


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_whole(v) for v in value)


def _boxes(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_BOXES and all(_box(b) for b in value)


def _latency(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= MAX_LATENCY_STAGES
        and all(_text(k, 64) and _finite(v) and v >= 0 for k, v in value.items())
    )


@dataclass(frozen=True)
class Rule:
    """What a header field must hold: the check, the words of a refusal ("must be ..."), the type
    as docs/protocol.md's field tables write it, and the kind of defect a receiver counts."""

    check: Callable[[Any], bool]
    meaning: str
    doc: str
    kind: str = "field"

    def or_null(self) -> Rule:
        return Rule(_optional(self.check), f"{self.meaning} or null", f"{self.doc} or null", self.kind)


def one_of(choices: Sequence[str], kind: str = "field") -> Rule:
    words = " or ".join(choices) if len(choices) < 3 else ", ".join(choices[:-1]) + f" or {choices[-1]}"
    return Rule(
        lambda v: isinstance(v, str) and v in choices, words, ", ".join(f'`"{c}"`' for c in choices), kind
    )


NAME = Rule(is_name, NAME_MEANING, "name")
COUNT = Rule(_whole, "a non-negative integer", "int ≥ 0")
SIDE = Rule(lambda v: _whole(v, 1), "a positive integer", "int ≥ 1", "shape")
TEXT = Rule(_text, "printable text of 1-256 characters", "string, 1–256 chars")
TIME = Rule(lambda v: _text(v, 64), "an ISO 8601 time", "string, ISO 8601")
NUMBER = Rule(_finite, "a finite number", "finite number")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false", "bool")
ERROR_TEXT = Rule(lambda v: _text(v, MAX_ERROR_TEXT), "text", "string, 1–2048 chars")


def wire(rule: Rule, default: Any = MISSING, *, factory: Any = MISSING, required: bool | None = None) -> Any:
    """A message field with its rule. It must be present on the wire when it has no default,
    or when `required` says so (counters a sender always writes)."""
    return field(default=default, default_factory=factory, metadata={"rule": rule, "required": required})


@cache
def declared(message: type) -> tuple[dict[str, Rule], tuple[str, ...]]:
    """A message's field rules and the fields its header must carry (`schema` apart)."""
    rules, required = {}, []
    for item in fields(message):
        if item.name == "schema":
            continue
        rules[item.name] = item.metadata["rule"]
        needed = item.metadata["required"]
        if needed or (needed is None and item.default is MISSING and item.default_factory is MISSING):
            required.append(item.name)
    return rules, tuple(required)


def _check(condition: bool, kind: str, detail: str) -> None:
    if not condition:
        raise ProtocolError(kind, detail)


def _validate(raw: dict[str, Any], message: type) -> None:
    """Schema first, then unknown fields, then every field present (and every required one)."""
    schema = raw.get("schema")
    _check(_whole(schema) and schema == SCHEMA_VERSION, "schema", f"unknown schema version {schema!r}")
    _check_fields(raw, message)


def _conforms(raw: Any, message: type) -> bool:
    """A nested object (no schema of its own) holds what `message` declares."""
    try:
        _check(isinstance(raw, dict) and "schema" not in raw, "field", "not an object")
        _check_fields(raw, message)
    except ProtocolError:
        return False
    return True


def _check_fields(raw: dict[str, Any], message: type) -> None:
    rules, needed = declared(message)
    unknown = set(raw) - set(rules) - {"schema"}
    _check(not unknown, "field", f"unknown fields {sorted(unknown)[:5]}")
    for name in needed:
        _check(name in raw, rules[name].kind, f"{name} is missing")
    for name, value in raw.items():
        if name != "schema":
            rule = rules[name]
            _check(rule.check(value), rule.kind, f"{name} must be {rule.meaning}, got {_show(value)}")


def _message(message: type, raw: dict[str, Any]) -> Any:
    """A validated header as its dataclass."""
    _validate(raw, message)
    return message(**raw)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _parse_header(raw: bytes | memoryview) -> dict[str, Any]:
    _check(len(raw) <= MAX_HEADER_BYTES, "header", f"header of {len(raw)} bytes is too large")
    try:
        header = json.loads(bytes(raw), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("json", f"header is not JSON: {exc}") from None
    _check(isinstance(header, dict), "json", "header is not a JSON object")
    return header


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def dump_json(value: Any) -> bytes:
    """Strict JSON (no NaN or infinity: strict parsers in other languages reject the whole message)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise ProtocolError("field", f"not encodable as strict JSON: {exc}") from None


def _parts(parts: Sequence[Any], count: int, topic: bytes | None) -> None:
    _check(len(parts) == count, "parts", f"expected {count} parts, got {len(parts)}")
    if topic is not None:
        _check(bytes(parts[0]) == topic, "topic", f"unexpected topic {bytes(parts[0])[:32]!r}")


# ---- frame (capture → worker), expect (capture → publisher) ---------------------------------------
@dataclass(frozen=True)
class FrameHeader:
    """One camera frame, as capture sends it to a worker."""

    station: str = wire(NAME)
    camera: str = wire(NAME)
    seq: int = wire(COUNT)  # per camera, increasing: a gap means frames were lost before the worker
    frame_id: str = wire(TEXT)
    capture_utc: str = wire(TIME)  # UTC
    capture_monotonic_ns: int = wire(COUNT)  # capture host's monotonic clock, for latency on one host
    height: int = wire(SIDE)
    width: int = wire(SIDE)
    channels: int = wire(
        Rule(lambda v: _whole(v) and v in (1, 3), "1 or 3", "1 or 3", "shape")
    )  # 1 mono, 3 RGB
    pixel_type: str = wire(one_of(tuple(PIXEL_TYPES), "dtype"), "uint8")
    trigger: str = wire(one_of(TRIGGER_MODES), "free_run")
    part_id: str | None = wire(TEXT.or_null(), None)  # triggered mode: the physical part this frame shows
    # triggered mode: verdict due this long after capture
    deadline_ms: float | None = wire(
        Rule(lambda v: _finite(v) and v > 0, "a positive number", "number > 0").or_null(), None
    )
    product: str | None = wire(NAME.or_null(), None)  # the recipe that judges this frame (its trigger's)
    schema: int = SCHEMA_VERSION

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)

    @property
    def payload_bytes(self) -> int:
        return self.height * self.width * self.channels * np.dtype(PIXEL_TYPES[self.pixel_type]).itemsize


def _frame_header(raw: dict[str, Any]) -> FrameHeader:
    header: FrameHeader = _message(FrameHeader, raw)
    _check(
        header.payload_bytes <= MAX_PIXEL_BYTES,
        "shape",
        f"declared frame {header.height}x{header.width}x{header.channels} {header.pixel_type} is larger "
        f"than {MAX_PIXEL_BYTES >> 20} MiB",
    )
    return header


def _identity(raw: dict[str, Any]) -> tuple[str | None, str | None]:
    """The frame id and camera of a header that may be invalid otherwise, for its ERROR verdict."""
    frame_id = raw.get("frame_id") if _text(raw.get("frame_id")) else None
    camera = raw.get("camera") if is_name(raw.get("camera")) else None
    return frame_id, camera


def _encode_header(header: FrameHeader) -> bytes:
    raw = asdict(header)
    _frame_header(raw)  # what the receiver would refuse is refused here
    return dump_json(raw)


def encode_frame(header: FrameHeader, pixels: np.ndarray) -> list[Any]:
    """Multipart frame message; the pixel part is a buffer view of `pixels` (no copy)."""
    if pixels.shape != header.shape or pixels.dtype != PIXEL_TYPES[header.pixel_type]:
        raise ValueError(f"pixels {pixels.shape} {pixels.dtype} do not match the header {header.shape}")
    return [FRAME_TOPIC, _encode_header(header), memoryview(np.ascontiguousarray(pixels).data).cast("B")]


def decode_frame(parts: Sequence[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Validate a frame message and return its header and a (read-only) pixel array view.

    A ProtocolError carries the frame id and camera whenever the header named them validly, so the
    frame can still be answered with an ERROR verdict.
    """
    _parts(parts, 3, FRAME_TOPIC)
    raw = _parse_header(parts[1])
    frame_id, camera = _identity(raw)
    try:
        header = _frame_header(raw)
        payload = memoryview(parts[2])
        _check(
            payload.nbytes == header.payload_bytes,
            "size",
            f"pixel part has {payload.nbytes} bytes, header declares {header.payload_bytes}",
        )
    except ProtocolError as error:
        raise ProtocolError(error.kind, error.detail, frame_id, camera) from None
    pixels = np.frombuffer(payload, dtype=PIXEL_TYPES[header.pixel_type]).reshape(header.shape)
    return header, pixels


def encode_expect(header: FrameHeader) -> list[bytes]:
    """Capture → publisher: a triggered frame was sent and must get exactly one verdict."""
    return [EXPECT_TOPIC, _encode_header(header)]


def decode_expect(parts: Sequence[Any]) -> FrameHeader:
    _parts(parts, 2, EXPECT_TOPIC)
    header = _frame_header(_parse_header(parts[1]))
    _check(header.trigger == "triggered", "field", "only triggered frames are announced")
    return header


def peek_frame(parts: Sequence[Any]) -> FrameHeader | None:
    """A frame message's header if it is valid, else None; the pixels are not looked at (a broker
    passes every message on, and the worker answers what is wrong with it)."""
    try:
        _parts(parts, 3, FRAME_TOPIC)
        return _frame_header(_parse_header(parts[1]))
    except (ProtocolError, TypeError):
        return None


# ---- worker pool: ready (worker → broker), reload and refused (broker → worker) ------------------
@dataclass(frozen=True)
class WorkerReady:
    """A pool worker's report to its broker, sent on connecting, after every micro-batch and at
    least every heartbeat. Counts are cumulative since the worker started, so a lost or reordered
    report never makes the broker's view of the worker wrong for long."""

    worker: str = wire(TEXT)  # a name for logs and metrics (host and slot)
    received: int = wire(COUNT)  # frames received from the broker
    answered: int = wire(COUNT)  # frames received and answered (a verdict sent to the publisher)
    capacity: int = wire(COUNT)  # frames it can take now, beyond those received
    received_bytes: int = wire(COUNT)  # bytes of the frames received
    capacity_bytes: int = wire(COUNT)  # bytes it can take now, beyond those received
    bank_id: str = wire(TEXT)
    bank_version: str = wire(TEXT)
    reloads: int = wire(COUNT, 0)  # reloads finished (swapped in or failed)
    # why the latest reload failed, if it did
    reload_error: str | None = wire(ERROR_TEXT.or_null(), None)
    schema: int = SCHEMA_VERSION


def encode_ready(ready: WorkerReady) -> list[bytes]:
    body = asdict(ready)
    _validate(body, WorkerReady)
    return [READY_TOPIC, dump_json(body)]


def decode_ready(parts: Sequence[Any]) -> WorkerReady:
    _parts(parts, 2, READY_TOPIC)
    ready: WorkerReady = _message(WorkerReady, _parse_header(parts[1]))
    _check(ready.answered <= ready.received, "field", "answered exceeds received")
    return ready


NAMES = Rule(lambda v: isinstance(v, list) and len(v) <= MAX_CAMERAS and all(is_name(x) for x in v),
             "a list of names", "list of names")  # fmt: skip
SELECTED = Rule(
    lambda v: isinstance(v, dict) and len(v) <= MAX_CAMERAS and all(map(is_name, [*v, *v.values()])),
    "an object of camera names to recipe names", "object of camera → recipe",
)  # fmt: skip


@dataclass(frozen=True)
class BrokerOrder:
    """Broker → worker: `reload` (load the bank store's active version), `refused` (no frames for
    this worker, and why) or `select` (the pool's recipe per camera for frames naming no product)."""

    error: str | None = wire(ERROR_TEXT.or_null(), None)
    selected: dict[str, str] | None = wire(SELECTED.or_null(), None)
    schema: int = SCHEMA_VERSION


BROKER_ORDERS = (RELOAD_TOPIC, REFUSED_TOPIC, SELECT_TOPIC)


def encode_broker_order(
    topic_: bytes, error: str | None = None, selected: dict[str, str] | None = None
) -> list[bytes]:
    """`reload`, `refused` (with `error`) or `select` (with `selected`), broker → worker."""
    _check(topic_ in BROKER_ORDERS, "topic", f"not a broker order: {topic_!r}")
    order = BrokerOrder(None if error is None else error[:MAX_ERROR_TEXT], selected)
    body = {k: v for k, v in asdict(order).items() if v is not None}
    _validate(body, BrokerOrder)
    return [topic_, dump_json(body)]


def decode_broker_order(parts: Sequence[Any]) -> tuple[bytes, BrokerOrder]:
    """The order (its topic) and its header; a ProtocolError for anything else."""
    _check(len(parts) == 2 and bytes(parts[0]) in BROKER_ORDERS, "topic", "not a broker order")
    return bytes(parts[0]), _message(BrokerOrder, _parse_header(parts[1]))


# ---- trigger (PLC bridge or MES → capture) --------------------------------------------------------
@dataclass(frozen=True)
class Trigger:
    part_id: str = wire(TEXT)
    product: str | None = wire(NAME.or_null(), None)  # the recipe this part is judged by (null: the default)
    schema: int = SCHEMA_VERSION


def encode_trigger(part_id: str, product: str | None = None) -> list[bytes]:
    """A software trigger: take one frame of the part `part_id`, of `product` if named."""
    body = {k: v for k, v in asdict(Trigger(part_id, product)).items() if v is not None}
    _validate(body, Trigger)
    return [TRIGGER_TOPIC, dump_json(body)]


def decode_trigger(parts: Sequence[Any]) -> Trigger:
    """A valid trigger message: the part id, and the product if it named one."""
    _parts(parts, 2, TRIGGER_TOPIC)
    return _message(Trigger, _parse_header(parts[1]))


# ---- verdict (publisher → subscribers) and result (worker or capture → publisher) -----------------
@dataclass(frozen=True)
class Defect:
    """Why a part was rejected: one blob of the anomaly map over its region's threshold, at least
    the region's minimum size."""

    region: str = wire(NAME)  # the inspect region it lies in (`frame` when the recipe has none)
    area_px: int = wire(COUNT)  # frame pixels
    box: list[int] = wire(Rule(_box, "[x, y, width, height] integers", "`[x, y, width, height]`"))
    peak: float = wire(NUMBER)  # the anomaly map's largest value in the blob
    threshold: float = wire(NUMBER)  # the region's threshold it was over
    area_mm2: float | None = wire(NUMBER.or_null(), None)  # with the camera's mm_per_px


DEFECTS = Rule(
    lambda v: isinstance(v, list) and len(v) <= MAX_DEFECTS and all(_conforms(d, Defect) for d in v),
    f"a list of at most {MAX_DEFECTS} defect objects",
    f"list of at most {MAX_DEFECTS} defect objects",
)


@dataclass(frozen=True)
class VerdictMessage:
    """One frame's outcome, published on `verdict.<station>.<camera>.`."""

    station: str = wire(NAME)
    camera: str = wire(NAME)
    frame_id: str = wire(TEXT)
    verdict: Verdict = wire(one_of(tuple(Verdict.__members__)))
    capture_utc: str = wire(TIME)
    capture_monotonic_ns: int = wire(COUNT)
    part_id: str | None = wire(TEXT.or_null(), None)
    score: float | None = wire(NUMBER.or_null(), None)
    threshold: float | None = wire(NUMBER.or_null(), None)
    bank_id: str | None = wire(TEXT.or_null(), None)
    bank_version: str | None = wire(TEXT.or_null(), None)
    backend: str | None = wire(TEXT.or_null(), None)
    latency_ms: dict[str, float] = wire(
        Rule(_latency, "an object of stage names to non-negative numbers", "object of stage → ms"),
        factory=dict,
    )
    defect_area_px: int = wire(COUNT, 0)
    # [x, y, width, height] in frame pixels
    boxes: list[list[int]] = wire(
        Rule(_boxes, f"a list of at most {MAX_BOXES} [x, y, width, height] lists of integers",
             f"list of at most {MAX_BOXES} `[x, y, width, height]`"),
        factory=list,
    )  # fmt: skip
    error: str | None = wire(
        Rule(lambda v: isinstance(v, str) and len(v) <= MAX_ERROR_TEXT, "text", "string").or_null(), None
    )
    recipe: str | None = wire(NAME.or_null(), None)  # the recipe that judged it
    defects: list[dict[str, Any]] = wire(DEFECTS, factory=list)  # NOK: what rejected it, strongest first
    region: str | None = wire(NAME.or_null(), None)  # NOK: the deciding region (its strongest defect's)
    reason: str | None = wire(one_of(REASONS).or_null(), None)  # why it is not OK (null for OK)
    has_mask: bool = wire(FLAG, False)  # a mask message for this frame follows on mask.<station>.<camera>.
    epoch: int = wire(COUNT, 0)  # the publisher's start, set by the publisher: a new epoch means it restarted
    seq: int = wire(COUNT, 0)  # per topic and epoch, set by the publisher
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


class Topic(NamedTuple):
    """A topic's levels; `camera` is empty for a station's own topics (heartbeat)."""

    kind: str
    station: str
    camera: str = ""


def topic(kind: str, station: str = "", camera: str | None = None) -> bytes:
    """`kind.station.camera.` (or `kind.station.`): every topic ends with a dot, so that a
    subscription prefix such as `verdict.line1.cam1.` never also matches camera `cam10`. Without
    a station (or camera), the prefix that subscribes to every one: `kind.` (`kind.station.`).
    The one place a topic is built; `parse_topic` is the one that reads one."""
    levels = [kind]
    for level in (station, camera or ""):
        if not level:
            break
        levels.append(level)
    return "".join(f"{level}." for level in levels).encode()


def parse_topic(value: str | bytes) -> Topic:
    """The levels of a topic `topic` built; a ProtocolError for anything else."""
    levels = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).split(".")
    named = all(is_name(level) for level in levels[:-1])
    _check(len(levels) in (3, 4) and levels[-1] == "" and named, "topic", f"not a topic: {value[:64]!r}")
    return Topic(*levels[:-1])


def verdict_body(message: VerdictMessage) -> dict[str, Any]:
    body = asdict(message)
    body["verdict"] = Verdict(message.verdict).value
    return body


def encode_verdict(message: VerdictMessage) -> list[bytes]:
    body = verdict_body(message)
    _validate(body, VerdictMessage)
    return [topic("verdict", message.station, message.camera), dump_json(body)]


def current_body(raw: dict[str, Any]) -> dict[str, Any]:
    """A header stored by an earlier version (a journal line, a replay row) as this version's:
    version 3 only added optional fields, so a version-2 header reads as it was."""
    if raw.get("schema") in READABLE_STORED_VERSIONS and _whole(raw.get("schema")):
        return {**raw, "schema": SCHEMA_VERSION}
    return raw


def verdict_from_body(raw: dict[str, Any]) -> VerdictMessage:
    """A verdict from its decoded JSON header (as in a replay reply), validated."""
    _validate(raw, VerdictMessage)
    return VerdictMessage(**{**raw, "verdict": Verdict(raw["verdict"])})


def decode_verdict(parts: Sequence[Any]) -> VerdictMessage:
    """Validate a verdict message (what subscribers receive)."""
    _parts(parts, 2, None)
    message = verdict_from_body(_parse_header(parts[1]))
    _check(
        bytes(parts[0]) == topic("verdict", message.station, message.camera),
        "topic",
        f"topic {bytes(parts[0])[:64]!r} does not match station and camera",
    )
    return message


def check_png(data: bytes | memoryview) -> tuple[int, int]:
    """Width and height of an 8-bit greyscale PNG, checked from its signature and header chunk."""
    head = bytes(data[:33])
    _check(
        len(head) == 33 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR",
        "mask",
        "the mask is not a PNG",
    )
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    _check(width > 0 and height > 0, "mask", "the mask PNG has no pixels")
    _check(depth == 8 and colour == 0, "mask", "the mask PNG must be 8-bit greyscale")
    return width, height


def encode_result(verdict: VerdictMessage, mask_png: bytes | None) -> list[bytes]:
    """Worker (or capture) → publisher: the verdict's two parts, then the mask PNG (empty if none)."""
    if mask_png and verdict.verdict not in MASKED_VERDICTS:
        raise ProtocolError("mask", f"a {verdict.verdict} verdict carries no mask")
    return [*encode_verdict(_with_mask_flag(verdict, bool(mask_png))), mask_png or b""]


def _with_mask_flag(verdict: VerdictMessage, has_mask: bool) -> VerdictMessage:
    return verdict if verdict.has_mask == has_mask else replace(verdict, has_mask=has_mask)


def decode_result(parts: Sequence[Any]) -> tuple[VerdictMessage, bytes | None]:
    """A worker's or capture's result: the typed verdict and its checked mask PNG (or None)."""
    _parts(parts, 3, None)
    message = decode_verdict(parts[:2])
    mask = bytes(parts[2]) or None
    _check(message.has_mask == (mask is not None), "mask", "has_mask does not match the mask part")
    if mask is not None:
        _check(message.verdict in MASKED_VERDICTS, "mask", f"a {message.verdict} verdict carries no mask")
        check_png(mask)
    return message, mask


# ---- mask and heartbeat (publisher → subscribers) -------------------------------------------------
@dataclass(frozen=True)
class MaskHeader:
    station: str = wire(NAME)
    camera: str = wire(NAME)
    frame_id: str = wire(TEXT)
    epoch: int = wire(COUNT, 0, required=True)
    seq: int = wire(COUNT, 0, required=True)
    schema: int = SCHEMA_VERSION


def encode_mask(header: MaskHeader, png: bytes) -> list[bytes]:
    body = asdict(header)
    _validate(body, MaskHeader)
    check_png(png)
    return [topic("mask", header.station, header.camera), dump_json(body), png]


def decode_mask(parts: Sequence[Any]) -> tuple[MaskHeader, bytes]:
    _parts(parts, 3, None)
    header: MaskHeader = _message(MaskHeader, _parse_header(parts[1]))
    _check(bytes(parts[0]) == topic("mask", header.station, header.camera), "topic", "topic mismatch")
    png = bytes(parts[2])
    check_png(png)
    return header, png


@dataclass(frozen=True)
class CameraState:
    """How a camera is, as its capture process sees it (and the publisher passes on)."""

    state: str = wire(one_of(CAMERA_STATES))
    since_utc: str = wire(TIME)  # when it entered this state
    reason: str | None = wire(ERROR_TEXT.or_null(), None)  # why it is not streaming
    width: int | None = wire(SIDE.or_null(), None)  # the latest frame's size
    height: int | None = wire(SIDE.or_null(), None)
    reconnects: int = wire(COUNT, 0)  # times it streamed again after a loss
    failed_parts: int = wire(COUNT, 0)  # triggered parts capture answered ERROR (no frame in time)


CAMERA_STATE = Rule(lambda v: _conforms(v, CameraState), "a camera state object", "camera state")
CAMERA_STATES_BY_NAME = Rule(
    lambda v: isinstance(v, dict) and len(v) <= MAX_CAMERAS
    and all(is_name(k) and _conforms(s, CameraState) for k, s in v.items()),
    "an object of camera names to camera states",
    "object of camera → camera state",
)  # fmt: skip


@dataclass(frozen=True)
class CameraReport:
    """Capture → publisher (results endpoint), on every change and every second."""

    station: str = wire(NAME)
    camera: str = wire(NAME)
    state: dict[str, Any] = wire(CAMERA_STATE)
    schema: int = SCHEMA_VERSION


def encode_camera_report(station: str, camera: str, state: CameraState) -> list[bytes]:
    body = asdict(CameraReport(station, camera, asdict(state)))
    _validate(body, CameraReport)
    return [CAMERA_TOPIC, dump_json(body)]


def decode_camera_report(parts: Sequence[Any]) -> tuple[str, str, CameraState]:
    """Station, camera and state of a valid camera report."""
    _parts(parts, 2, CAMERA_TOPIC)
    report: CameraReport = _message(CameraReport, _parse_header(parts[1]))
    return report.station, report.camera, CameraState(**report.state)


@dataclass(frozen=True)
class Heartbeat:
    station: str = wire(NAME)
    published: int = wire(COUNT)  # verdicts published in this epoch
    # every camera's newest state (state objects as in a camera report)
    cameras: dict[str, dict[str, Any]] = wire(CAMERA_STATES_BY_NAME, factory=dict)
    epoch: int = wire(COUNT, 0, required=True)
    seq: int = wire(COUNT, 0, required=True)
    schema: int = SCHEMA_VERSION


def encode_heartbeat(beat: Heartbeat) -> list[bytes]:
    body = asdict(beat)
    _validate(body, Heartbeat)
    return [topic("heartbeat", beat.station), dump_json(body)]


def decode_heartbeat(parts: Sequence[Any]) -> Heartbeat:
    _parts(parts, 2, None)
    beat: Heartbeat = _message(Heartbeat, _parse_header(parts[1]))
    _check(bytes(parts[0]) == topic("heartbeat", beat.station), "topic", "topic mismatch")
    return beat


# ---- requests and replies (REQ/REP: the publisher's latest/replay query, worker control) -----------
@dataclass(frozen=True)
class Query:
    """To the publisher's query endpoint: a camera's latest verdict, or (with `after_seq`) the
    verdicts it published for that camera after `after_seq` of `epoch` (what a subscriber missed)."""

    camera: str = wire(NAME)
    epoch: int | None = wire(COUNT.or_null(), None)
    after_seq: int | None = wire(COUNT.or_null(), None)
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Control:
    """To a worker's (or the pool broker's) control endpoint: `select` makes `recipe` judge the
    frames of `camera` that name no product (a free-running camera's changeover)."""

    command: str = wire(one_of(CONTROL_COMMANDS))
    camera: str | None = wire(NAME.or_null(), None)
    recipe: str | None = wire(NAME.or_null(), None)
    schema: int = SCHEMA_VERSION


def _single(parts: Sequence[Any]) -> dict[str, Any]:
    _parts(parts, 1, None)
    return _parse_header(parts[0])


def encode_query(query: Query) -> list[bytes]:
    body = {k: v for k, v in asdict(query).items() if v is not None}
    _validate(body, Query)
    return [dump_json(body)]


def decode_query(parts: Sequence[Any]) -> Query:
    raw = _single(parts)
    _validate(raw, Query)
    query = Query(**{k: v for k, v in raw.items() if k != "schema"})
    _check((query.epoch is None) == (query.after_seq is None), "field", "epoch and after_seq go together")
    return query


def encode_control(command: str, camera: str | None = None, recipe: str | None = None) -> list[bytes]:
    body = {k: v for k, v in asdict(Control(command, camera, recipe)).items() if v is not None}
    _validate(body, Control)
    _check_control(Control(command, camera, recipe))
    return [dump_json(body)]


def decode_control(parts: Sequence[Any]) -> Control:
    control: Control = _message(Control, _single(parts))
    _check_control(control)
    return control


def _check_control(control: Control) -> None:
    selecting = control.command == "select"
    _check(
        selecting == (control.camera is not None) == (control.recipe is not None),
        "field",
        "select names a camera and a recipe; status and reload name neither",
    )


# Every REP answer is one of these: `ok` says which, and a client reads the rest by what it asked.
OK_FLAG = Rule(lambda v: v is True, "true", "`true`")
NOT_OK = Rule(lambda v: v is False, "false", "`false`")
OBJECTS = Rule(lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of objects",
               "list of verdict headers")  # fmt: skip
VERDICT_OR_NULL = Rule(lambda v: v is None or isinstance(v, dict), "an object or null",
                       "verdict header or null")  # fmt: skip
BANK_TEXT = TEXT.or_null()


@dataclass(frozen=True)
class ErrorReply:
    """Any request refused or failed: why, and what kind of problem (a protocol error's kind,
    `reload`, `internal`); a failed reload names the bank still scoring."""

    error: str = wire(ERROR_TEXT)
    kind: str = wire(TEXT)
    bank_id: str | None = wire(BANK_TEXT, None)
    bank_version: str | None = wire(BANK_TEXT, None)
    ok: bool = wire(NOT_OK, False, required=True)


@dataclass(frozen=True)
class BankReply:
    """A worker's `status`, `reload` and `select`, a pool's `reload`: the bank scoring now (the
    default recipe's), and a worker's recipes and the ones selected per camera."""

    bank_id: str | None = wire(BANK_TEXT)
    bank_version: str | None = wire(BANK_TEXT)
    recipes: list[str] | None = wire(NAMES.or_null(), None)
    selected: dict[str, str] | None = wire(SELECTED.or_null(), None)
    ok: bool = wire(OK_FLAG, True, required=True)


@dataclass(frozen=True)
class PoolWorkerStatus:
    """One worker of a pool, in the broker's status reply."""

    worker: str = wire(TEXT)
    bank_id: str | None = wire(BANK_TEXT)
    bank_version: str | None = wire(BANK_TEXT)
    sent: int = wire(COUNT)
    in_flight: int = wire(COUNT)
    credit: int = wire(COUNT)
    refused: str | None = wire(ERROR_TEXT.or_null())


POOL_WORKERS = Rule(lambda v: isinstance(v, list) and all(_conforms(x, PoolWorkerStatus) for x in v),
                    "a list of pool workers", "list of worker objects")  # fmt: skip


@dataclass(frozen=True)
class PoolStatusReply:
    """The broker's `status` and `select`: the pool's bank, each worker's, and the pool's recipe
    per camera."""

    bank_id: str | None = wire(BANK_TEXT)
    bank_version: str | None = wire(BANK_TEXT)
    workers: list[dict] = wire(POOL_WORKERS)
    recipes: list[str] | None = wire(NAMES.or_null(), None)
    selected: dict[str, str] | None = wire(SELECTED.or_null(), None)
    ok: bool = wire(OK_FLAG, True, required=True)


@dataclass(frozen=True)
class LatestReply:
    """A camera's latest verdict (`Query` without `after_seq`)."""

    epoch: int = wire(COUNT)
    verdict: dict | None = wire(VERDICT_OR_NULL)
    ok: bool = wire(OK_FLAG, True, required=True)


@dataclass(frozen=True)
class ReplayGap:
    """Positions `from_seq`..`to_seq` of `epoch`, published and no longer kept."""

    epoch: int = wire(COUNT)
    from_seq: int = wire(COUNT)
    to_seq: int = wire(COUNT)


GAPS = Rule(lambda v: isinstance(v, list) and all(_conforms(x, ReplayGap) for x in v), "a list of gaps",
            "list of {epoch, from_seq, to_seq}")  # fmt: skip


@dataclass(frozen=True)
class ReplayReply:
    """One page of a camera's verdicts after a position (`Query` with `epoch` and `after_seq`)."""

    epoch: int = wire(COUNT)
    verdicts: list[dict] = wire(OBJECTS)
    more: bool = wire(FLAG)
    missing: list[dict] = wire(GAPS)
    known: bool = wire(FLAG)
    complete: bool = wire(FLAG)
    ok: bool = wire(OK_FLAG, True, required=True)


REPLIES = (ErrorReply, BankReply, PoolStatusReply, LatestReply, ReplayReply)
Reply = ErrorReply | BankReply | PoolStatusReply | LatestReply | ReplayReply


def encode_reply(reply: Reply) -> list[bytes]:
    """Every REP answer, `{"schema", "ok", ...}`, checked against its shape before it is sent."""
    shape: type = type(reply)
    needed = declared(shape)[1]  # (an optional field left at None is left out)
    body = {
        "schema": SCHEMA_VERSION,
        **{k: v for k, v in asdict(reply).items() if v is not None or k in needed},
    }
    _validate(body, shape)
    return [dump_json(body)]


def decode_reply(parts: Sequence[Any], shape: type | None = None) -> dict[str, Any]:
    """A reply's fields; with `shape` (what the request expects when it succeeds), checked
    against it, or against `ErrorReply` when `ok` is false."""
    raw = _single(parts)
    _check(raw.get("schema") == SCHEMA_VERSION and _whole(raw.get("schema")), "schema", "unknown schema")
    _check(isinstance(raw.get("ok"), bool), "field", "ok must be true or false")
    if shape is not None:
        _validate(raw, shape if raw["ok"] else ErrorReply)
    return raw
