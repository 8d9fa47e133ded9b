"""Fused C passes for exact magnitude pruning (kernels/cpu/magnitude.c), loaded on first use.

The library is built and opened by `llmprune.ckernel` (gcc, cached by source hash) and called through
ctypes. Each function here takes contiguous CPU tensors of the dtype whose keys
it reads (fp16/bf16: 15-bit keys, fp32: 31-bit keys) and returns None when it cannot run them, so
`masks.py` falls back to its plain-torch reference; `load()` is None when the library cannot be built.
"""
from __future__ import annotations

import ctypes
import logging
import threading

import torch

log = logging.getLogger(__name__)

_ELSIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}
_BITS = {2: 15, 4: 31}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def load() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None (with one logged notice) when that fails."""
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        from .. import ckernel

        _lib, _error = ckernel.load("magnitude.c", _declare)
        if _lib is None:
            log.warning("llmprune magnitude kernel unavailable, using the torch reference: %s", _error)
        return _lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.llmprune_hist_high15.argtypes = [p, i64, i32, p, i32]
    lib.llmprune_hist_high15.restype = i32
    lib.llmprune_hist_low16.argtypes = [p, i64, p, i32, p, p]
    lib.llmprune_hist_low16.restype = i64
    lib.llmprune_apply.argtypes = [p, i64, i32, i64, i64, p, i32]
    lib.llmprune_apply.restype = i32
    lib.llmprune_keep_mask.argtypes = [p, i64, i32, i64, i64, p, i32]
    lib.llmprune_keep_mask.restype = i32


def _usable(x: torch.Tensor, bits: int) -> ctypes.CDLL | None:
    size = _ELSIZE.get(x.dtype)
    if size is None or _BITS[size] != bits or x.device.type != "cpu" or not x.is_contiguous():
        return None
    return load()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} rejected its arguments (rc={rc})")


def hist_high15(x: torch.Tensor, bits: int) -> torch.Tensor | None:
    """Counts (int64, 32768) of the top 15 bits of the `bits`-bit keys of x; bin 0 counts x's zeros."""
    lib = _usable(x, bits)
    if lib is None:
        return None
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    _check(lib.llmprune_hist_high15(x.data_ptr(), x.numel(), x.element_size(), hist.data_ptr(),
                                    torch.get_num_threads()), "llmprune_hist_high15")
    return hist


def hist_low16(x: torch.Tensor, slot_of: torch.Tensor, bins: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For fp32 x: (counts (len(bins) << 16,) of codes slot << 16 | low 16 key bits, over the values whose
    top 15 key bits are bins[slot]; those codes (int32) in row-major order). slot_of: int32 (32768,)."""
    lib = _usable(x, 31)
    if lib is None:
        return None
    hist = torch.zeros(len(bins) << 16, dtype=torch.int64)
    codes = torch.empty(x.numel(), dtype=torch.int32)  # untouched pages cost nothing; sliced below
    table = None if len(bins) == 1 else slot_of.data_ptr()
    m = lib.llmprune_hist_low16(x.data_ptr(), x.numel(), table, bins[0], hist.data_ptr(), codes.data_ptr())
    return hist, codes[:m].clone()


def apply_threshold_(x: torch.Tensor, key: int, ties: int, bits: int) -> tuple[int, int] | None:
    """Zero, in place, keys < `key` and the first `ties` keys == `key`; (zeros before, zeros after)."""
    lib = _usable(x, bits)
    if lib is None:
        return None
    counts = torch.zeros(2, dtype=torch.int64)
    _check(lib.llmprune_apply(x.data_ptr(), x.numel(), x.element_size(), max(key, 0), ties, counts.data_ptr(),
                              torch.get_num_threads()), "llmprune_apply")
    return int(counts[0]), int(counts[1])


def keep_mask(x: torch.Tensor, key: int, ties: int, bits: int) -> torch.Tensor | None:
    """The keep-mask (bool, x's shape) of the rule `apply_threshold_` applies; x unchanged."""
    lib = _usable(x, bits)
    if lib is None:
        return None
    keep = torch.empty(x.shape, dtype=torch.bool)
    _check(lib.llmprune_keep_mask(x.data_ptr(), x.numel(), x.element_size(), max(key, 0), ties, keep.data_ptr(),
                                  torch.get_num_threads()), "llmprune_keep_mask")
    return keep
