"""What can be told about an OpenCV camera without opening it (no OpenCV here: the configuration
check uses it): a device node that is not there, an RTSP server that refuses the stream."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


def is_device(uri: str | int) -> bool:
    return isinstance(uri, int) or uri.startswith("/dev/")


def is_stream(uri: str | int) -> bool:
    return isinstance(uri, str) and "://" in uri


def stream_problem(uri: str | int, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a camera cannot be opened as far as can be told without opening it: a device node that
    is not there, or an RTSP server that refuses the stream (asked with one DESCRIBE, whose status
    line FFmpeg would only print to stderr). None: nothing found wrong."""
    uri = int(uri) if isinstance(uri, str) and uri.isdigit() else uri
    if is_device(uri):
        device = f"/dev/video{uri}" if isinstance(uri, int) else str(uri)
        return None if Path(device).exists() else f"{device} does not exist (camera unplugged?)"
    if not (isinstance(uri, str) and uri.lower().startswith("rtsp://")):
        return None
    parts = urlsplit(uri)
    request = f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 554), timeout=timeout_s) as link:
            link.sendall(request.encode())
            status = link.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as exc:
        return f"RTSP server {parts.hostname}:{parts.port or 554} unreachable ({exc.strerror or exc})"
    fields = status.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/"):
        return f"{parts.hostname}:{parts.port or 554} does not answer as an RTSP server ({status[:60]!r})"
    if fields[1] == "401":
        return None  # credentials are FFmpeg's to send: the server is there
    return None if fields[1].startswith("2") else f"the RTSP server answered {status[len(fields[0]) + 1 :]}"
