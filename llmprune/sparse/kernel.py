"""CPU kernels for y = x @ W^T with W in the packed bitmask format: build on first use, dispatch, reference.

The C source (kernels/cpu/bitmask_spmm.c) is built and opened by `llmprune.ckernel` on first use. ctypes
drops the GIL for the call; OpenMP splits output rows across `torch.get_num_threads()` threads.

Paths, fastest first: "avx512bf16" (the avx512 path plus vdpbf16ps; used when x and W are both bf16,
otherwise it runs as "avx512"), "avx512" (needs avx512f+avx512bw+avx512vl+bmi2), "avx2" (avx2+fma+f16c),
"generic" (portable C), and "reference" (plain torch: unpack, then a dense fp32 matmul), which is also
the fallback when no compiler or library is available.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import torch

from .. import ckernel
from .format import unpack

log = logging.getLogger(__name__)

MAX_BATCH = 8
PATHS = ("avx512bf16", "avx512", "avx2", "generic")  # compiled, fastest first; "reference" always works
_PATH_ID = {"generic": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3}
CFLAGS = ckernel.CFLAGS
_SOURCE_NAME = "bitmask_spmm.c"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_paths: tuple[str, ...] = ("reference",)  # set when the library loads


def build(force: bool = False, name: str = _SOURCE_NAME) -> Path:
    """Compile this module's kernel library into the cache (see `llmprune.ckernel.build`); return its path."""
    return ckernel.build(name, force, CFLAGS)


def _load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None (with one logged notice) when that fails."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        lib, _lib_error = ckernel.load(_SOURCE_NAME, _declare, CFLAGS)
        if lib is None:
            log.warning("llmprune sparse CPU kernel unavailable, using the dense torch path: %s", _lib_error)
            return None
        _detect_paths(lib)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.llmprune_spmm.argtypes = [i32, p, p, p, i64, i64, p, i64, p, i32, i32]
    lib.llmprune_spmm.restype = i32
    lib.llmprune_unpack.argtypes = [p, p, p, i64, i64, i64, p, i32, i32]
    lib.llmprune_unpack.restype = i32
    lib.llmprune_cpu_has_avx512.restype = i32
    lib.llmprune_cpu_has_avx2.restype = i32
    lib.llmprune_cpu_has_avx512bf16.restype = i32


def _detect_paths(lib: ctypes.CDLL) -> None:
    global _paths
    found = [name for name, has in (("avx512bf16", lib.llmprune_cpu_has_avx512bf16),
                                    ("avx512", lib.llmprune_cpu_has_avx512), ("avx2", lib.llmprune_cpu_has_avx2)) if has()]
    _paths = (*found, "generic", "reference")


def available_paths() -> list[str]:
    """Kernel paths this machine can run, fastest first, always ending with "reference"."""
    return list(_paths) if _load() is not None else ["reference"]


def best_path() -> str:
    """The fastest available path ("reference" when nothing compiled)."""
    return available_paths()[0]


def unavailable_reason() -> str | None:
    """Why the compiled kernel could not be used (None when it can)."""
    _load()
    return _lib_error


def dense_weight(parts: dict[str, torch.Tensor], num_threads: int | None = None) -> torch.Tensor:
    """Dense (out, in) weight of packed CPU parts, decoded by the compiled library (format.unpack without it)."""
    lib = _load()
    values, bitmask, offsets = parts["values"], parts["bitmask"], parts["row_offsets"]
    if lib is None or values.device.type != "cpu":
        return unpack(parts)
    out_features, in_features = (int(v) for v in parts["shape"].tolist())
    values, bitmask, offsets = values.contiguous(), bitmask.contiguous(), offsets.contiguous()
    w = torch.zeros(out_features, in_features, dtype=values.dtype)
    rc = lib.llmprune_unpack(values.data_ptr(), bitmask.data_ptr(), offsets.data_ptr(), out_features,
                             bitmask.shape[1], in_features, w.data_ptr(), values.element_size(),
                             num_threads or torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"llmprune_unpack rejected its arguments (rc={rc})")
    return w


def reference_matmul(x: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """y = x @ W^T in plain torch (unpack, fp32 matmul); x (..., in) -> (..., out) in x's dtype."""
    w = unpack(parts)  # (out, in)
    return (x.float() @ w.float().T).to(x.dtype)


def sparse_matmul(x: torch.Tensor, parts: dict[str, torch.Tensor], path: str | None = None,
                  num_threads: int | None = None, bias: torch.Tensor | None = None,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for x (b, in) with b <= 8 on CPU and W packed with bf16/fp16 values.

    y (b, out) comes back in `out_dtype` (default: x's), rounded once from the fp32 accumulator (bias
    added in fp32).
    `path` picks a kernel ("avx512bf16", "avx512", "avx2", "generic", "reference"); None takes the fastest
    available. "avx512bf16" needs bf16 x and bf16 W and otherwise runs as "avx512". Other shapes, devices
    or dtypes go to the reference path.
    """
    path = path or best_path()
    values = parts["values"]
    if (path == "reference" or x.dim() != 2 or x.shape[0] < 1 or x.shape[0] > MAX_BATCH or x.device.type != "cpu"
            or values.dtype not in (torch.bfloat16, torch.float16)):
        y = reference_matmul(x.float(), parts)
        return (y if bias is None else y + bias.float()).to(out_dtype or x.dtype)
    if path not in _PATH_ID:
        raise ValueError(f"unknown kernel path '{path}'; available: {', '.join(available_paths())}")
    lib = _load()
    if lib is None:
        return sparse_matmul(x, parts, "reference", bias=bias, out_dtype=out_dtype)
    if path == "avx512bf16" and (x.dtype != torch.bfloat16 or values.dtype != torch.bfloat16):
        path = "avx512"
    bitmask, offsets = parts["bitmask"], parts["row_offsets"]
    out_features, words = bitmask.shape
    b, in_features = x.shape
    if in_features > words * 32 or in_features <= (words - 1) * 32:
        raise ValueError(f"x has {in_features} features but the packed weight has {words} mask words per row")
    x_dtype = torch.bfloat16 if path == "avx512bf16" else torch.float32
    if in_features == words * 32 and x.dtype == x_dtype and x.is_contiguous():
        xp = x  # the common case (in a multiple of 32): no copy
    else:
        xp = torch.zeros(b, words * 32, dtype=x_dtype)  # (b, words*32), zero-padded to whole words
        xp[:, :in_features] = x
    y = torch.empty(b, out_features, dtype=torch.float32)
    # the library reads raw memory: every operand must be contiguous and of the declared dtype
    values, bitmask, offsets = values.contiguous(), bitmask.contiguous(), offsets.contiguous()
    if bitmask.dtype != torch.int32 or offsets.dtype != torch.int64 or offsets.numel() != out_features + 1:
        raise ValueError("packed weight has malformed bitmask/row_offsets; see llmprune.sparse.format.check_parts")
    rc = lib.llmprune_spmm(_PATH_ID[path], values.data_ptr(), bitmask.data_ptr(), offsets.data_ptr(),
                           out_features, words, xp.data_ptr(), b, y.data_ptr(),
                           int(values.dtype == torch.float16), num_threads or torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"llmprune_spmm rejected its arguments (rc={rc})")
    if bias is not None:
        y += bias.float()
    out_dtype = out_dtype or x.dtype
    return y if out_dtype == torch.float32 else y.to(out_dtype)
