"""What every edge command shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from edge.errors import EdgeError
from edge.memory import return_large_blocks_to_os

EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool = False, fitting: bool = False) -> None:
    """Process start-up for every command: journal-friendly logging, and for commands that fit
    banks (`fitting`) glibc's mmap threshold pinned, which bounds their peak memory; a scoring
    daemon does without it, since returning its per-batch buffers to the OS costs it about 7 %
    of its throughput in page faults."""
    if fitting:
        return_large_blocks_to_os()
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
