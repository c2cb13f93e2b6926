"""One way to open a station socket, and the rules every receiving end follows.

Every socket is opened by `open_socket`: its kind, endpoint, bind or connect, linger, queue limits,
CURVE, and a message size cap (ZMQ_MAXMSGSIZE, checked per part by ZeroMQ itself: a peer that
sends more is disconnected before anything is allocated for it). Every REP socket answers every
request through `answer`, an error reply included, so no request can leave it unable to receive
(a REP socket that received and did not reply is stuck). `ErrorTally` counts malformed messages
by kind and logs each kind rarely, so a hostile peer can neither go unnoticed nor flood the log.
"""

from __future__ import annotations

import errno
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence

import zmq

from edge.errors import ConfigError, UsageError
from edge.protocol import MAX_HEADER_BYTES, MAX_PIXEL_BYTES, ErrorReply, ProtocolError, encode_reply
from edge.security import CurveClient, CurveServer

log = logging.getLogger("edge.sockets")
REQUEST_BYTES = MAX_HEADER_BYTES  # triggers, queries, control requests: one header each
FRAME_BYTES = MAX_PIXEL_BYTES  # frames and results (a mask PNG is at most a frame's size)
REPLY_BYTES = 16 * 1024 * 1024  # replies a client accepts (a replay of recent verdicts)
LOG_EVERY = 1000  # a malformed-message kind is logged the first time, then once per this many
ENDPOINT_PATTERN = r"^(tcp://[^\s]+:(\d+|\*)|ipc://[^\s]+|inproc://[^\s]+)$"
ENDPOINT_MEANING = "a ZeroMQ endpoint such as tcp://*:5556, tcp://10.0.0.5:5556 or ipc:///run/edge/x"


def check_endpoint(endpoint: str) -> None:
    """UsageError unless `endpoint` is a ZeroMQ endpoint (`localhost:5556` is not: it needs tcp://)."""
    if not isinstance(endpoint, str) or not re.fullmatch(ENDPOINT_PATTERN, endpoint):
        raise UsageError(f"{endpoint!r} is not {ENDPOINT_MEANING}")


def local_endpoint(endpoint: str) -> str:
    """Where a process on the same host connects to an endpoint bound as `endpoint`
    (tcp://*:5556 and tcp://0.0.0.0:5556 are bound on every interface, loopback included)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    return endpoint


def open_socket(
    context: zmq.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    max_message_bytes: int | None,
    linger_ms: int = 0,
    send_hwm: int | None = None,
    receive_hwm: int | None = None,
    curve: CurveServer | CurveClient | None = None,
) -> zmq.Socket:
    """A socket bound or connected to `endpoint`, with every option set before it is."""
    socket = context.socket(kind)
    try:
        socket.setsockopt(zmq.LINGER, linger_ms)
        if max_message_bytes is not None:
            socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if send_hwm is not None:
            socket.setsockopt(zmq.SNDHWM, send_hwm)
        if receive_hwm is not None:
            socket.setsockopt(zmq.RCVHWM, receive_hwm)
        if isinstance(curve, CurveServer):
            curve.secure(socket, context)
        elif isinstance(curve, CurveClient):
            curve.secure(socket)
        (socket.bind if bind else socket.connect)(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        if bind:  # not transient: say it once; a supervisor does not restart a ConfigError (exit 6)
            held = ": another program holds it" if exc.errno == errno.EADDRINUSE else ""
            raise ConfigError(f"{endpoint} cannot be bound ({exc}){held}") from None
        raise
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


class ErrorTally(Counter):
    """Malformed messages by kind (exported as metrics); each kind logged now and then."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        super().__init__()
        self.what = what
        self.logger = logger

    def count(self, error: ProtocolError | str, detail: str = "") -> None:
        """Count one message refused (a ProtocolError, or a kind with its detail)."""
        kind = error.kind if isinstance(error, ProtocolError) else error
        self[kind] += 1
        if self[kind] % LOG_EVERY == 1:
            why = error.detail if isinstance(error, ProtocolError) else detail
            self.logger.warning("refused %s (%s), %d so far: %s", self.what, kind, self[kind], why)


def answer(
    socket: zmq.Socket,
    handle: Callable[[Sequence[bytes]], list[bytes] | None],
    errors: ErrorTally,
) -> bool:
    """Receive one request on a REP socket and answer it: `handle`'s reply, or an error reply when
    the request is malformed or `handle` fails. Returns False when `handle` returned None: it
    deferred its answer, and the caller owes exactly one reply before this socket may receive."""
    try:
        # never block: a REP socket reports a message lacking the REQ envelope as readable, then
        # drops it inside recv, which would wait for the next valid request (a stalled process)
        parts = socket.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        errors.count("envelope", "a message without a request envelope (a DEALER or raw peer)")
        return True
    try:
        reply = handle(parts)
    except ProtocolError as error:
        errors.count(error)
        reply = encode_reply(ErrorReply(str(error)[:2048], error.kind))
    except Exception as exc:  # a request must never cost the process; it is answered and logged
        errors.count("internal")
        log.exception("request could not be answered")
        reply = encode_reply(ErrorReply(f"internal error: {type(exc).__name__}", "internal"))
    if reply is None:
        return False
    socket.send_multipart(reply)
    return True
