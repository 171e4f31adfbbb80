"""glibc's malloc, set for a process whose peak is the budget: big buffers go back to the OS when freed,
except inside scratch(), where a burst of short-lived numpy temporaries reuses the heap instead.

No-ops where the C library has no mallopt (macOS, musl), and when MALLOC_MMAP_THRESHOLD_ is in the
environment: the operator's setting wins.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MMAP_THRESHOLD = 128 * 1024  # the default: anything larger is its own mapping, returned when freed
# inside scratch(): the edge stage's temporaries (reduced planes, a strip's samples) are all smaller than this
SCRATCH_MMAP_THRESHOLD = 16 * 1024 * 1024
SCRATCH_TRIM_THRESHOLD = 64 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


_LIBC = _libc()


def _tunable() -> bool:
    return _LIBC is not None and hasattr(_LIBC, "mallopt") and not os.environ.get("MALLOC_MMAP_THRESHOLD_")


def _thresholds(mmap_threshold: int, trim_threshold: int) -> None:
    assert _LIBC is not None
    _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold)


def tune_malloc() -> None:
    """Serve big buffers (activations, decoded photos) with mmap so they go back to the OS when freed.

    glibc's dynamic threshold otherwise climbs after the first large free and keeps later ones on the
    heap, where fragmentation pins them.
    """
    if not _tunable():
        return
    _thresholds(MMAP_THRESHOLD, MMAP_THRESHOLD)
    _LIBC.mallopt(_M_ARENA_MAX, 2)  # request threads share two heaps instead of one each


def _trim() -> None:
    """Ask glibc to hand freed heap pages back to the OS (musl has mallopt but no malloc_trim)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def release_memory_to_os() -> None:
    """Collect Python garbage, then hand the freed heap pages back (no-op without glibc)."""
    gc.collect()
    _trim()


_scratch_lock = threading.Lock()
_scratch_users = 0


@contextmanager
def scratch() -> Iterator[None]:
    """Heap allocation for the numpy temporaries made inside, then the freed heap handed back to the OS.

    Under the 128 KB threshold each temporary of the edge stage (app/matting.py) was a fresh mapping, and its
    pages were faulted in and zeroed again: ~128,000 page faults and ~0.4 s of system time per 1-2 MP
    request, three times the stage's own arithmetic (docs/performance.md, Edges). The setting is the
    process's: it holds while any thread is inside, and a concurrent inference (INFERENCE_SLOTS=2) may put
    its activations on the heap meanwhile; the trim after the last thread leaves returns them. Free chunks
    the stage leaves inside the heap (below its live objects) keep their addresses, with their pages handed
    back, so later buffers of their size may reuse them instead of a new mapping until the next trim: the
    same pages either way, and the whole-server peaks did not move (docs/performance.md, Edges).
    """
    global _scratch_users
    if not _tunable():
        yield
        return
    with _scratch_lock:
        _scratch_users += 1
        if _scratch_users == 1:
            _thresholds(SCRATCH_MMAP_THRESHOLD, SCRATCH_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _scratch_lock:
            _scratch_users -= 1
            if _scratch_users == 0:
                _thresholds(MMAP_THRESHOLD, MMAP_THRESHOLD)
                _trim()
