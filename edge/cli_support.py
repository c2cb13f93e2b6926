"""What every edge command shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from edge.errors import EdgeError

EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(main: Callable[[], int]) -> int:
    """Run a command; a user's mistake prints one line and a meaningful exit code, no traceback."""
    try:
        return main()
    except EdgeError as exc:
        logging.getLogger("edge").error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        logging.getLogger("edge").error("interrupted")
        return EXIT_INTERRUPTED
