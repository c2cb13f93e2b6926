"""edge-keys: make CURVE key pairs for a station's publisher and its subscribers.

edge-keys publisher --dir /etc/edge/keys              the publisher's pair
edge-keys mes-1 --dir /etc/edge/keys/clients-out      a subscriber's pair; copy mes-1.key into the
                                                      publisher's allowed_clients folder
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from edge.cli_support import run_cli, setup_logging
from edge.errors import UsageError
from edge.security import generate_keys

log = logging.getLogger("edge.keys")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-keys",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 written; 2 bad name or the pair exists already",
    )
    parser.add_argument("name", help="whose pair: letters, digits, '_' and '-'")
    parser.add_argument("--dir", type=Path, required=True, help="folder for NAME.key and NAME.key_secret")
    args = parser.parse_args(argv)
    setup_logging()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.name):
        raise UsageError(f"key name {args.name!r}: use 1 to 64 letters, digits, '_' or '-'")
    if (args.dir / f"{args.name}.key_secret").exists():
        raise UsageError(f"{args.dir / args.name}.key_secret exists already; refusing to overwrite a key")
    public, secret = generate_keys(args.dir, args.name)
    log.info("public key %s (share it), secret key %s (keep it, mode 0600)", public, secret)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
