"""CPU kernels for y = x @ W^T with W in the packed bitmask format: build on first use, dispatch, reference.

The C source (kernels/cpu/bitmask_spmm.c) is built and opened by `llmprune.ckernel` on first use. ctypes
drops the GIL for the call; OpenMP (the runtime torch itself loads, so one thread pool) splits output rows
across `torch.get_num_threads()` threads in equal shares of weight bytes.

A weight is described to the library once, by a `Plan` (pointers, sizes, an fp32 copy of the bias), and
each call passes only x and y: `run(plan, x)` costs one output allocation and one foreign call. x may be
fp32, bf16 or fp16 and y comes back in x's dtype; the library converts and pads x itself and rounds y once
from the fp32 accumulator. `dense_plan` runs a plain (out, in) bf16/fp16 weight through the same decode
(for layers that stay dense next to sparse ones, such as a tied lm_head).

Paths, fastest first: "avx512bf16" (the avx512 path plus vdpbf16ps; used when x and W are both bf16,
otherwise it runs as "avx512"), "avx512" (needs avx512f+avx512bw+avx512vl+bmi2), "avx2" (avx2+fma+f16c),
"generic" (portable C), and "reference" (plain torch: unpack, then a dense fp32 matmul), which is also
the fallback when no compiler or library is available.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import ckernel
from .format import check_parts, unpack

log = logging.getLogger(__name__)

MAX_BATCH = 8
PATHS = ("avx512bf16", "avx512", "avx2", "generic")  # compiled, fastest first; "reference" always works
_PATH_ID = {"generic": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3}
_DTYPE_ID = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
VALUE_DTYPES = (torch.bfloat16, torch.float16)
CFLAGS = ckernel.CFLAGS
_SOURCE_NAME = "bitmask_spmm.c"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_paths: tuple[str, ...] = ("reference",)  # set when the library loads


class _Weight(ctypes.Structure):
    """Mirror of `llmprune_weight` in bitmask_spmm.c."""
    _fields_ = [("values", ctypes.c_void_p), ("bitmask", ctypes.c_void_p), ("row_offsets", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("out", ctypes.c_int64), ("in_", ctypes.c_int64),
                ("words", ctypes.c_int64), ("nnz", ctypes.c_int64), ("is_fp16", ctypes.c_int32),
                ("dense", ctypes.c_int32), ("nm24", ctypes.c_int32)]


def build(force: bool = False, name: str = _SOURCE_NAME) -> Path:
    """Compile this module's kernel library into the cache (see `llmprune.ckernel.build`); return its path."""
    return ckernel.build(name, force, CFLAGS)


def _load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None (with one logged notice) when that fails."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:  # fast path: every forward asks
        return _lib
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
    lib.llmprune_linear.argtypes = [i32, p, p, i32, i64, p, i32, i32]
    lib.llmprune_linear.restype = i32
    lib.llmprune_linear_group.argtypes = [i32, p, i32, p, i32, i64, p, i32, i32]
    lib.llmprune_linear_group.restype = i32
    lib.llmprune_unpack.argtypes = [p, p, p, i64, i64, i64, p, i32, i32]
    lib.llmprune_unpack.restype = i32
    lib.llmprune_stream_read.argtypes = [p, i64, i32]
    lib.llmprune_stream_read.restype = ctypes.c_uint64
    lib.llmprune_stream_copy.argtypes = [p, p, i64, i32]
    lib.llmprune_stream_copy.restype = None
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
    return _paths[0] if _load() is not None else "reference"


def unavailable_reason() -> str | None:
    """Why the compiled kernel could not be used (None when it can)."""
    _load()
    return _lib_error


# ---------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """One weight as the library sees it: the C struct plus the tensors its pointers point into (kept alive)."""
    struct: _Weight
    address: int  # of struct, passed to every call
    out_features: int
    in_features: int
    values: torch.Tensor  # the tensor whose storage the plan reads
    ptr: int  # values.data_ptr() when the plan was made: modules compare it to see that it is still current
    keep: tuple  # every other tensor the struct points into


def _bias32(bias: torch.Tensor | None, out_features: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if bias.shape != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    return bias.detach().to(device="cpu", dtype=torch.float32).contiguous()


def is_2of4(bitmask: torch.Tensor, in_features: int) -> bool:
    """Whether a bitmask keeps exactly 2 of every 4 columns, with in_features a multiple of 32: the kernel
    then finds each mask byte's 4 values at a fixed offset (no popcounts)."""
    if in_features % 32 or bitmask.numel() == 0:
        return False
    return bool(_BYTE_IS_2OF4[bitmask.contiguous().view(torch.uint8).int()].all())


# mask byte -> both of its 4-column nibbles keep exactly 2
_BYTE_IS_2OF4 = torch.tensor([bin(b & 15).count("1") == 2 and bin(b >> 4).count("1") == 2 for b in range(256)])


def _make_plan(values, bitmask, offsets, bias, out_features, in_features, dense) -> Plan:
    nm24 = not dense and is_2of4(bitmask, in_features)
    struct = _Weight(values.data_ptr(), bitmask.data_ptr(), 0 if offsets is None else offsets.data_ptr(),
                     0 if bias is None else bias.data_ptr(), out_features, in_features, bitmask.shape[-1],
                     values.numel(), int(values.dtype == torch.float16), int(dense), int(nm24))
    return Plan(struct, ctypes.addressof(struct), out_features, in_features, values, values.data_ptr(),
                (bitmask, offsets, bias))


def plan(parts: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> Plan:
    """A Plan for packed CPU parts with bf16/fp16 values (see format.py); validates sizes, not popcounts
    (SparseLinear checks those once with check_parts(deep=True))."""
    out_features, in_features = check_parts(parts)
    values, bitmask, offsets = parts["values"], parts["bitmask"], parts["row_offsets"]
    if values.dtype not in VALUE_DTYPES or values.device.type != "cpu":
        raise ValueError(f"the CPU kernel reads bf16/fp16 values on the CPU, got {values.dtype} on {values.device}")
    if not (values.is_contiguous() and bitmask.is_contiguous() and offsets.is_contiguous()):
        raise ValueError("packed parts must be contiguous")
    return _make_plan(values, bitmask, offsets, _bias32(bias, out_features), out_features, in_features, False)


def _ones_mask_row(in_features: int) -> torch.Tensor:
    """One bitmask row keeping every column of `in_features` (pad bits 0): int32 (1, words)."""
    words = (in_features + 31) // 32
    row = torch.full((1, words), -1, dtype=torch.int32)
    tail = in_features - 32 * (words - 1)
    if tail < 32:
        row[0, -1] = (1 << tail) - 1
    return row


def dense_plan(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Plan:
    """A Plan reading a dense (out, in) bf16/fp16 CPU weight in place (no copy: a tied weight stays tied)."""
    if weight.dim() != 2 or weight.dtype not in VALUE_DTYPES or weight.device.type != "cpu" or not weight.is_contiguous():
        raise ValueError(f"dense_plan needs a contiguous 2-D bf16/fp16 CPU weight, got {weight.dtype} "
                         f"{tuple(weight.shape)} on {weight.device}")
    out_features, in_features = weight.shape
    return _make_plan(weight.detach(), _ones_mask_row(in_features), None, _bias32(bias, out_features),
                      out_features, in_features, True)


def run(p: Plan, x: torch.Tensor, path: str | None = None, num_threads: int | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for x (..., in) on the CPU with at most MAX_BATCH rows; y (..., out) in x's dtype."""
    if not (x.dtype in _DTYPE_ID and x.is_cpu and x.dim() >= 1 and x.shape[-1] == p.in_features):
        raise ValueError(f"x must be a CPU fp32/bf16/fp16 tensor with {p.in_features} features, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if not 1 <= x.numel() // max(p.in_features, 1) <= MAX_BATCH:
        raise ValueError(f"the CPU kernel takes 1 to {MAX_BATCH} rows of x, got shape {tuple(x.shape)}")
    if _load() is None or (path is not None and path not in _PATH_ID):
        raise ValueError(f"unknown kernel path '{path}'; available: {', '.join(available_paths())}")
    return run_unchecked(p, x, _PATH_ID[path or best_path()], num_threads or torch.get_num_threads())


def run_unchecked(p: Plan, x: torch.Tensor, path_id: int, num_threads: int) -> torch.Tensor:
    """`run` without the argument checks, for modules that made them (a decoding step calls this ~200 times)."""
    if not x.is_contiguous():
        x = x.contiguous()
    shape = x.shape
    y = torch.empty((*shape[:-1], p.out_features), dtype=x.dtype)
    code = _DTYPE_ID[x.dtype]
    rc = _lib.llmprune_linear(path_id, p.address, x.data_ptr(), code, x.numel() // p.in_features, y.data_ptr(),
                              code, num_threads)
    if rc != 0:
        raise RuntimeError(f"llmprune_linear rejected its arguments (rc={rc})")
    return y


MAX_GROUP = 8  # weights per llmprune_linear_group call


def group_addresses(plans) -> ctypes.Array:
    """The C array of the plans' struct addresses that `run_group_unchecked` passes (built once per group)."""
    if not 1 <= len(plans) <= MAX_GROUP or len({p.in_features for p in plans}) != 1:
        raise ValueError(f"a group is 1 to {MAX_GROUP} plans with the same in_features")
    return (ctypes.c_void_p * len(plans))(*(p.address for p in plans))


def run_group_unchecked(plans, addresses: ctypes.Array, x: torch.Tensor, path_id: int,
                        num_threads: int) -> list[torch.Tensor]:
    """y_i = x @ W_i^T (+ bias_i) for plans reading the same x, in one foreign call (one x conversion, one
    parallel region): what `run_unchecked` does for one plan, for a group such as q/k/v."""
    if not x.is_contiguous():
        x = x.contiguous()
    lead = x.shape[:-1]
    ys = [torch.empty((*lead, p.out_features), dtype=x.dtype) for p in plans]
    outs = (ctypes.c_void_p * len(ys))(*(y.data_ptr() for y in ys))
    code = _DTYPE_ID[x.dtype]
    rc = _lib.llmprune_linear_group(path_id, addresses, len(plans), x.data_ptr(), code,
                                    x.numel() // plans[0].in_features, outs, code, num_threads)
    if rc != 0:
        raise RuntimeError(f"llmprune_linear_group rejected its arguments (rc={rc})")
    return ys


def best_path_id() -> int | None:
    """_PATH_ID of best_path(), None when only the reference path is available."""
    return _PATH_ID.get(best_path())


# ---------------------------------------------------------------------------- one-shot helpers


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
    added in fp32). `path` picks a kernel ("avx512bf16", "avx512", "avx2", "generic", "reference"); None
    takes the fastest available. "avx512bf16" needs bf16 x and bf16 W and otherwise runs as "avx512".
    Other shapes, devices or dtypes go to the reference path. Builds a Plan per call: modules keep theirs.
    """
    path = path or best_path()
    values = parts["values"]
    if (path == "reference" or x.dim() != 2 or x.shape[0] < 1 or x.shape[0] > MAX_BATCH or x.device.type != "cpu"
            or values.dtype not in VALUE_DTYPES or x.dtype not in _DTYPE_ID):
        y = reference_matmul(x.float(), parts)
        return (y if bias is None else y + bias.float()).to(out_dtype or x.dtype)
    if path not in _PATH_ID:
        raise ValueError(f"unknown kernel path '{path}'; available: {', '.join(available_paths())}")
    if _load() is None:
        return sparse_matmul(x, parts, "reference", bias=bias, out_dtype=out_dtype)
    words = parts["bitmask"].shape[-1]
    if x.shape[1] > words * 32 or x.shape[1] <= (words - 1) * 32:
        raise ValueError(f"x has {x.shape[1]} features but the packed weight has {words} mask words per row")
    p = plan({k: v.contiguous() for k, v in parts.items()}, bias)
    out_dtype = out_dtype or x.dtype
    if out_dtype != x.dtype:  # the library writes y in x's dtype: widen x (exact), round y once
        return run(p, x.float(), path, num_threads).to(out_dtype)
    return run(p, x, path, num_threads)


# ---------------------------------------------------------------------------- bandwidth probe


def stream_bandwidth(nbytes: int = 256 << 20, num_threads: int | None = None, repeats: int = 5) -> dict[str, float]:
    """STREAM-like memory bandwidth on the kernels' own threads: {"read_gbs", "copy_gbs"} (best of repeats).

    read: sum a buffer of `nbytes` (what a matrix-vector product does with its weight); copy: STREAM's copy,
    counted as STREAM counts it (bytes read + bytes written). Use a buffer well past the last-level cache.
    """
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the compiled kernel library is unavailable: {_lib_error}")
    threads = num_threads or torch.get_num_threads()
    src = torch.ones(nbytes // 8, dtype=torch.int64)
    dst = torch.zeros_like(src)
    read, copy = [], []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        lib.llmprune_stream_read(src.data_ptr(), src.numel() * 8, threads)
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        lib.llmprune_stream_copy(dst.data_ptr(), src.data_ptr(), src.numel() * 8, threads)
        copy.append(time.perf_counter() - t)
    return {"read_gbs": src.numel() * 8 / min(read) / 1e9, "copy_gbs": 2 * src.numel() * 8 / min(copy) / 1e9}
