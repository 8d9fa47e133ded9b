"""Keeping resident memory flat over a long streaming run."""
from __future__ import annotations

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def release_large_frees() -> None:
    """Serve allocations of 1 MiB and more with mmap, so every freed tensor goes back to the OS.

    glibc raises its mmap threshold after each large free (up to 32 MiB); from then on layer-sized tensors
    come from the heap and are kept, so RSS creeps up with every layer streamed (measured: +25 MB per layer
    of an 8-layer Wanda run, 850 MB peak instead of 635 MB). A fixed threshold stops the creep. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> None:
    """Serve every allocation from the heap and never trim it, so freed tensors are reused without page faults.

    A calibrated layer pass allocates and frees hundreds of MB of activations per chunk; with glibc's defaults
    each such tensor above 32 MiB is a fresh mmap and every page of it faults again (measured: 5.4 million
    minor faults, 15 s of system time, for 8 x 512 tokens through SmolLM2). Peak RSS stays the peak of live
    tensors plus fragmentation; call `return_free_pages` between phases so that fragmentation cannot pile up.
    No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


def return_free_pages() -> None:
    """Give the pages of every free heap chunk back to the OS (glibc's malloc_trim, which also releases holes in
    the middle of the heap). Under `reuse_freed_memory` the heap otherwise only grows: each streamed layer
    leaves holes its successor cannot fit into (examples/bench_calibrated.py, Wanda at 1 thread over SmolLM2's 30
    layers: peak RSS 1186 MB without it, 589 MB with it). Once per layer costs one fault per page of the next
    layer's working set. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
