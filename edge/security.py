"""CURVE encryption and client allow-lists for the station's sockets (ZeroMQ's own mechanism).

A server socket (the publisher's PUB and REP, a worker's frames PULL reached from another host) gets
the server's secret key and an allow-list: a folder of the public keys of the clients that may
connect, checked by a ZAP handler per authentication domain. A client without an allowed key gets
nothing (its handshake is refused), and a plaintext client cannot even complete the handshake.
Keys are ZeroMQ certificate files (`edge-keys` makes them); no key file can execute code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge.errors import ConfigError

log = logging.getLogger("edge.security")
_AUTHENTICATORS: dict[int, ThreadAuthenticator] = {}  # one ZAP handler per context


def _load(path: str | Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CURVE key file {path}: {exc}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds a public key only; a secret key file (.key_secret) is needed")
    return public, secret_key


@dataclass(frozen=True)
class CurveServer:
    secret_key_file: str  # this server's .key_secret
    allowed_clients: str  # folder of the allowed clients' public .key files
    domain: str = "edge"

    def secure(self, socket: zmq.Socket, context: zmq.Context) -> None:
        """Make `socket` (before it binds) a CURVE server that admits only the allowed clients."""
        if not Path(self.allowed_clients).is_dir():
            raise ConfigError(f"CURVE allow-list {self.allowed_clients} is not a folder of public keys")
        public, secret = _load(self.secret_key_file, secret=True)
        authenticator = _AUTHENTICATORS.get(id(context))
        if authenticator is None:
            authenticator = _AUTHENTICATORS[id(context)] = ThreadAuthenticator(context, log=log)
            authenticator.start()
        authenticator.configure_curve(domain=self.domain, location=self.allowed_clients)
        socket.zap_domain = self.domain.encode()
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True


@dataclass(frozen=True)
class CurveClient:
    secret_key_file: str  # this client's .key_secret
    server_key_file: str  # the server's public .key

    def secure(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it connects) a CURVE client of that server."""
        public, secret = _load(self.secret_key_file, secret=True)
        server_public, _ = _load(self.server_key_file, secret=False)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public


def stop_authenticator(context: zmq.Context) -> None:
    authenticator = _AUTHENTICATORS.pop(id(context), None)
    if authenticator is not None:
        authenticator.stop()


def generate_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A key pair NAME.key (public: give it to the other side) and NAME.key_secret (keep it, 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
    secret.chmod(0o600)
    return public, secret
