"""Peak resident memory of this process, resettable on Linux so each stage can be measured alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 16 << 20
KEPT_FREE_BYTES = 256 << 20


def tune_allocator(large: int = LARGE_BLOCK_BYTES, kept: int = KEPT_FREE_BYTES) -> bool:
    """Pin glibc's allocator: blocks of `large` bytes or more always go back to the OS, and up to
    `kept` bytes of freed smaller blocks stay in the heap for the next batch.

    Left to itself glibc raises its mmap threshold each time a large block is freed, after which
    tens-of-MB temporaries stay in the heap: a bottle fit then peaked between 1.3 and 1.6 GB from
    run to run, and 1.18-1.45 GB with the threshold pinned at 16 MB. But pinning it also fixes the
    trim threshold at 128 KB, and every batch's freed temporaries went back to the OS and were
    faulted in again: edge-eval's bottle scoring ran at 28-35 images/s and 26-31 ms per image
    pinned, 46-49 images/s and 23 ms with 256 MB kept, the peak unchanged (docs/decisions.md).
    Process-wide, so commands call it at start-up; the engine library never does.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, large)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, kept))
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux ≥ 4.0); False if unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MB since start or the last reset."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
