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
