import json
import random
import struct
import zlib
from dataclasses import asdict

import numpy as np
import pytest

from edge.client import subscription
from edge.protocol import (
    BankReply,
    BrokerOrder,
    ErrorReply,
    FrameHeader,
    Heartbeat,
    LatestReply,
    MaskHeader,
    PoolStatusReply,
    PoolWorkerStatus,
    ProtocolError,
    Query,
    ReplayReply,
    Verdict,
    VerdictMessage,
    decode_broker_order,
    decode_control,
    decode_frame,
    decode_heartbeat,
    decode_mask,
    decode_query,
    decode_reply,
    decode_result,
    decode_trigger,
    decode_verdict,
    encode_broker_order,
    encode_control,
    encode_frame,
    encode_heartbeat,
    encode_mask,
    encode_query,
    encode_reply,
    encode_result,
    encode_trigger,
    encode_verdict,
    parse_topic,
    topic,
)

pytestmark = pytest.mark.light  # runs on the light install too (pip install edge)


def header(**changes) -> FrameHeader:
    fields = dict(
        station="s1",
        camera="cam0",
        seq=7,
        frame_id="f-7",
        capture_utc="2026-11-29T02:00:00Z",
        capture_monotonic_ns=123,
        height=4,
        width=5,
        channels=3,
    )
    fields.update(changes)
    return FrameHeader(**fields)


def good_frame() -> tuple[FrameHeader, np.ndarray, list[bytes]]:
    head = header()
    pixels = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    return head, pixels, [bytes(p) for p in encode_frame(head, pixels)]


def test_frame_round_trip_mono_and_16_bit():
    head, pixels, parts = good_frame()
    decoded, array = decode_frame(parts)
    assert decoded == head and np.array_equal(array, pixels)
    mono = header(channels=1, pixel_type="uint16", trigger="triggered", part_id="P-1", deadline_ms=250)
    values = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
    decoded, array = decode_frame([bytes(p) for p in encode_frame(mono, values)])
    assert decoded == mono and np.array_equal(array, values)


def test_verdict_round_trip():
    message = VerdictMessage(
        station="s1",
        camera="cam0",
        frame_id="f-7",
        verdict=Verdict.NOK,
        capture_utc="2026-11-29T02:00:00Z",
        capture_monotonic_ns=1,
        part_id="P-1",
        score=3.5,
        threshold=2.0,
        bank_id="b",
        bank_version="3",
        backend="torch-cpu",
        latency_ms={"backbone": 10.0},
        defect_area_px=40,
        boxes=[[1, 2, 3, 4]],
        seq=9,
        epoch=1234,
    )
    assert decode_verdict(encode_verdict(message)) == message
    assert encode_verdict(message)[0] == b"verdict.s1.cam0."


def _mutated_header(raw: dict, rng: random.Random) -> tuple[bytes, str]:
    """A header with one defect, and the kind of error it must raise."""
    choice = rng.randrange(13)
    body = dict(raw)
    if choice == 0:
        body["schema"] = rng.choice([0, 1, 99, "2", None, True, 2.0])
        return json.dumps(body).encode(), "schema"
    if choice == 1:
        del body[rng.choice(["station", "camera", "capture_utc"])]
        return json.dumps(body).encode(), "field"
    if choice == 2:
        body[rng.choice(["seq", "capture_monotonic_ns"])] = rng.choice([-1, 1.5, "7", None, True])
        return json.dumps(body).encode(), "field"
    if choice == 3:
        body[rng.choice(["height", "width"])] = rng.choice([0, -3, 2.5, "4", None])
        return json.dumps(body).encode(), "shape"
    if choice == 4:
        body["height"], body["width"] = rng.choice([(10**6, 10**6), (2**40, 1), (70_000, 1_000)])
        return json.dumps(body).encode(), "shape"
    if choice == 5:
        body["pixel_type"] = rng.choice(["float32", "int8", "", 5, [], {}, None])
        return json.dumps(body).encode(), "dtype"
    if choice == 6:
        body["channels"] = rng.choice([0, 2, 4, "3"])
        return json.dumps(body).encode(), "shape"
    if choice == 7:
        body[f"extra_{rng.randrange(100)}"] = 1
        return json.dumps(body).encode(), "field"
    if choice == 8:
        text = json.dumps(body)
        return text[: rng.randrange(1, len(text) - 1)].encode(), "json"
    if choice == 9:
        return rng.choice([b"", b"\xff\xfe\x00", b"[1, 2]", b"null", b'"text"']), "json"
    if choice == 10:
        body["deadline_ms"] = rng.choice([0, -5, "soon", True, [1]])
        return json.dumps(body).encode(), "field"
    if choice == 11:
        body["camera"] = rng.choice(["cam.1", "κάμερα", "", "a" * 65, "line 1", ["c"], {"c": 1}])
        return json.dumps(body).encode(), "field"
    body["trigger"] = rng.choice(["always", "", 3, []])
    return json.dumps(body).encode(), "field"


def test_a_thousand_malformed_frames_are_refused_by_kind():
    """Truncated, wrong sizes, wrong types, bad JSON, unknown schemas, huge shapes, empty parts."""
    rng = random.Random(0)
    _, _, parts = good_frame()
    raw = json.loads(parts[1])
    kinds: dict[str, int] = {}
    for _ in range(1500):
        case = rng.randrange(5)
        if case == 0:
            message, kind = list(parts[: rng.randrange(3)]) + [b""] * rng.randrange(2), "parts"
            if len(message) == 3:
                message.append(b"")
        elif case == 1:
            message, kind = [rng.choice([b"", b"frames", b"verdict.s1.cam0"]), parts[1], parts[2]], "topic"
        elif case == 2:
            cut = rng.choice([0, 1, len(parts[2]) - 1, len(parts[2]) + 1, len(parts[2]) * 4])
            payload = (parts[2] * 5)[:cut]
            message, kind = [parts[0], parts[1], payload], "size"
        else:
            body, kind = _mutated_header(raw, rng)
            message = [parts[0], body, parts[2]]
        with pytest.raises(ProtocolError) as error:
            decode_frame(message)
        assert error.value.kind == kind, (message[:2], error.value)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == {"parts", "topic", "size", "schema", "field", "shape", "dtype", "json"}
    assert sum(kinds.values()) == 1500


def test_errors_name_the_frame_when_the_header_did():
    _, _, parts = good_frame()
    with pytest.raises(ProtocolError) as error:
        decode_frame([parts[0], parts[1], parts[2][:-1]])
    assert error.value.frame_id == "f-7"
    with pytest.raises(ProtocolError) as error:
        decode_frame([parts[0], b"{not json", parts[2]])
    assert error.value.frame_id is None


def test_encoding_checks_pixels_against_header():
    with pytest.raises(ValueError):
        encode_frame(header(), np.zeros((4, 5), np.uint8))


def verdict(**changes) -> VerdictMessage:
    fields = dict(
        station="s1",
        camera="cam0",
        frame_id="f-1",
        verdict=Verdict.OK,
        capture_utc="t",
        capture_monotonic_ns=1,
    )
    return VerdictMessage(**{**fields, **changes})


def png_of(width: int, height: int) -> bytes:
    """A valid greyscale PNG, built with the standard library (the light install has no OpenCV)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


PNG = png_of(5, 4)


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("score", "high", "field"),
        ("score", True, "field"),
        ("defect_area_px", -5, "field"),
        ("frame_id", ["unhashable"], "field"),
        ("camera", {"a": 1}, "field"),
        ("camera", "line1.cam1", "field"),
        ("boxes", [[1, 2, 3]], "field"),
        ("boxes", [[0, 0, 1, 1]] * 300, "field"),
        ("latency_ms", {"total": -1}, "field"),
        ("verdict", "MAYBE", "field"),
        ("has_mask", 1, "field"),
        ("schema", True, "schema"),
        ("schema", 2.0, "schema"),
        ("unknown_field", 1, "field"),
    ],
)
def test_results_are_typed_before_publishing(field, value, kind):
    topic, body = encode_verdict(verdict())
    raw = json.loads(body)
    raw[field] = value
    with pytest.raises(ProtocolError) as error:
        decode_result([topic, json.dumps(raw).encode(), b""])
    assert error.value.kind == kind


def test_non_finite_numbers_never_reach_the_wire():
    for value in (float("nan"), float("inf")):
        with pytest.raises(ProtocolError):
            encode_verdict(verdict(score=value))
    topic, body = encode_verdict(verdict(score=1.0))
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ProtocolError) as error:
            decode_verdict([topic, body.replace(b'"score":1.0', b'"score":' + token)])
        assert error.value.kind == "json"


def test_results_carry_a_png_mask_exactly_when_they_say_so():
    message, mask = decode_result(encode_result(verdict(verdict=Verdict.NOK), PNG))
    assert message.has_mask and mask == PNG
    message, mask = decode_result(encode_result(verdict(), None))
    assert not message.has_mask and mask is None
    topic, body = encode_verdict(verdict(has_mask=True))
    for mask, kind in ((b"not a png", "mask"), (b"", "mask"), (PNG[:20], "mask")):
        with pytest.raises(ProtocolError) as error:
            decode_result([topic, body, mask])
        assert error.value.kind == kind
    with pytest.raises(ProtocolError):  # ERROR and TIMEOUT verdicts have no mask
        encode_result(verdict(verdict=Verdict.ERROR), PNG)


def test_every_other_message_kind_round_trips_and_refuses_garbage():
    header_ = MaskHeader("s1", "cam0", "f-1", epoch=5, seq=2)
    assert decode_mask(encode_mask(header_, PNG)) == (header_, PNG)
    beat = Heartbeat("s1", published=3, epoch=5, seq=9)
    assert decode_heartbeat(encode_heartbeat(beat)) == beat
    assert decode_query(encode_query(Query("cam0"))) == Query("cam0")
    assert decode_query(encode_query(Query("cam0", 5, 10))) == Query("cam0", 5, 10)
    assert decode_control(encode_control("reload")).command == "reload"
    selecting = decode_control(encode_control("select", "cam0", "screw"))
    assert (selecting.command, selecting.camera, selecting.recipe) == ("select", "cam0", "screw")
    for half in ({"command": "select", "camera": "cam0"}, {"command": "status", "recipe": "screw"}):
        with pytest.raises(ProtocolError, match="select names a camera and a recipe"):
            decode_control([json.dumps({"schema": 3, **half}).encode()])
    assert decode_trigger(encode_trigger("P-1")).part_id == "P-1"
    assert decode_trigger(encode_trigger("P-2", "bottle")).product == "bottle"
    refused = {"schema": 3, "ok": False, "error": "x", "kind": "field"}
    assert decode_reply(encode_reply(ErrorReply("x", "field"))) == refused
    garbage = [[], [b""], [b"{}"], [b"[]"], [b'{"schema": 3}'], [b'{"schema": 3}', b"x"], [b"\xff"]]
    for decode in (decode_query, decode_control, decode_reply, decode_trigger, decode_heartbeat, decode_mask):
        for parts in garbage:
            with pytest.raises(ProtocolError):
                decode(parts)
    with pytest.raises(ProtocolError):
        decode_control([json.dumps({"schema": 3, "command": "shutdown"}).encode()])
    with pytest.raises(ProtocolError):
        decode_query([json.dumps({"schema": 3, "camera": "cam0", "epoch": 1}).encode()])


def test_topics_end_with_a_dot_so_prefixes_name_one_camera():
    assert subscription("verdict", "line1", "cam1") == b"verdict.line1.cam1."
    assert not topic("verdict", "line1", "cam10").startswith(subscription("verdict", "line1", "cam1"))
    assert topic("verdict", "line1", "cam1").startswith(subscription("verdict", "line1"))
    with pytest.raises(ValueError):
        subscription("verdict", "line.1")


def test_one_function_builds_a_topic_and_one_reads_it():
    for kind, station, camera in (
        ("verdict", "line1", "cam1"),
        ("mask", "l", "c"),
        ("heartbeat", "line1", ""),
    ):
        built = topic(kind, station, camera)
        assert parse_topic(built) == (kind, station, camera) == parse_topic(built.decode())
    assert topic("verdict") == b"verdict." and topic("heartbeat", "line1") == b"heartbeat.line1."
    for foreign in (b"verdict.line1.cam1", b"verdict..cam1.", b"verdict.", b"a.b.c.d.", b"\xff.x.y."):
        with pytest.raises(ProtocolError):
            parse_topic(foreign)


def test_every_reply_has_a_shape_checked_when_sent_and_when_read():
    """Replies are typed like every other message: a producer cannot send a field its shape does
    not declare, and a client that names the shape it expects gets a ProtocolError for another."""
    gap = {"epoch": 7, "from_seq": 1, "to_seq": 2}
    page = ReplayReply(7, [{"frame_id": "f-1"}], more=False, missing=[gap], known=True, complete=False)
    worker = asdict(PoolWorkerStatus("h-0", "b", "v1", 3, 1, 2, None))
    replies = (
        page,
        LatestReply(7, None),
        BankReply("b", "v0002"),
        ErrorReply("gone", "reload", "b", "v1"),
        PoolStatusReply("b", "v1", [worker]),
    )
    for reply in replies:
        raw = decode_reply(encode_reply(reply), type(reply) if reply.ok else BankReply)
        assert type(reply)(**{k: v for k, v in raw.items() if k != "schema"}) == reply
    assert "bank_id" not in decode_reply(encode_reply(ErrorReply("x", "field")))  # optional nulls left out
    with pytest.raises(ProtocolError, match="missing"):
        encode_reply(ReplayReply(7, [], more=False, missing=[{"epoch": 7}], known=True, complete=True))
    with pytest.raises(ProtocolError, match="unknown fields"):
        decode_reply(encode_reply(LatestReply(7, None)), ReplayReply)
    with pytest.raises(ProtocolError):  # a worker in a pool status that is not one
        encode_reply(PoolStatusReply("b", "v1", [{"worker": "h-0"}]))


def test_broker_orders_round_trip_and_refuse_garbage():
    from edge.protocol import REFUSED_TOPIC, RELOAD_TOPIC

    assert decode_broker_order(encode_broker_order(RELOAD_TOPIC)) == (RELOAD_TOPIC, BrokerOrder())
    refused = encode_broker_order(REFUSED_TOPIC, "bank b2")
    assert decode_broker_order(refused) == (REFUSED_TOPIC, BrokerOrder("bank b2"))
    garbage = [
        [RELOAD_TOPIC],
        [b"frame", b"{}"],
        [REFUSED_TOPIC, b'{"schema": 3, "error": 5}'],
        [RELOAD_TOPIC, b'{"schema": 1}'],
        [RELOAD_TOPIC, b'{"schema": 3, "why": "x"}'],
    ]
    for parts in garbage:
        with pytest.raises(ProtocolError):
            decode_broker_order(parts)
