"""SparseLinear: an nn.Linear whose weight lives in the packed bitmask format, and swapping it into models.

The packed tensors sit in a small `PackedWeight` submodule named `weight`, so a SparseLinear's state_dict
keys are exactly the checkpoint keys: `<module>.weight.values`, `.bitmask`, `.row_offsets`, `.shape`
(plus `<module>.bias`). Forward runs the CPU kernel when x has at most 8 rows (token-by-token decoding)
and otherwise decodes the weight to dense and calls F.linear (prefill, GPU, fp32 weights).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LlmpruneError
from . import kernel
from .format import SUFFIXES, check_parts, pack

log = logging.getLogger(__name__)

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
MIN_SPARSITY = 0.4  # below this the packed format is not smaller and the kernel not faster than dense


class PackedWeight(nn.Module):
    """Holds the packed parts of one (out, in) weight as buffers; answers .dtype, .device and .size() like a tensor."""

    def __init__(self, parts: dict[str, torch.Tensor]):
        super().__init__()
        for suffix in SUFFIXES:
            self.register_buffer(suffix, parts[suffix])

    def parts(self) -> dict[str, torch.Tensor]:
        return {s: getattr(self, s) for s in SUFFIXES}

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def size(self) -> torch.Size:
        """(out, in) of the dense weight; `.shape` is the int64 buffer holding the same two numbers."""
        return torch.Size(int(v) for v in self.shape.tolist())

    def extra_repr(self) -> str:
        out_features, in_features = self.size()
        return f"{out_features}x{in_features}, nnz={self.values.numel()}, {self.dtype}"


class SparseLinear(nn.Module):
    """y = x W^T + b with W packed; a drop-in for nn.Linear at inference."""

    def __init__(self, parts: dict[str, torch.Tensor], bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = check_parts(parts, deep=True)
        self.weight = PackedWeight(parts)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # the C kernel reads values through row_offsets: never run it on loaded parts that disagree
        self.register_load_state_dict_post_hook(_check_loaded)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SparseLinear":
        """Pack a (pruned) nn.Linear; zeros of its weight are the pruned entries."""
        return cls(pack(linear.weight.detach()), linear.bias)

    def dense_weight(self) -> torch.Tensor:
        """The weight decoded to a dense (out, in) tensor on this module's device."""
        parts = self.weight.parts()
        if self.weight.device.type != "cpu":
            parts = {k: v.cpu() for k, v in parts.items()}
        return kernel.dense_weight(parts).to(self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)  # (rows, in)
        rows = x2d.shape[0]
        use_kernel = (1 <= rows <= kernel.MAX_BATCH and x.device.type == "cpu" and self.weight.dtype in KERNEL_DTYPES
                      and kernel.best_path() != "reference")
        if use_kernel:
            y = kernel.sparse_matmul(x2d, self.weight.parts(), bias=self.bias)  # (rows, out)
        else:
            w = self.dense_weight()
            y = F.linear(x2d, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_loaded(module: SparseLinear, incompatible_keys) -> None:
    check_parts(module.weight.parts(), deep=True)


def zero_fraction(w: torch.Tensor) -> float:
    """Fraction of entries equal to zero (the pruned fraction of a pruned weight)."""
    return float((w == 0).sum()) / max(w.numel(), 1)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def swap_linears_(model: nn.Module, names=None, min_sparsity: float = MIN_SPARSITY) -> int:
    """Replace pruned nn.Linear modules of `model` by SparseLinear in place; return how many were replaced.

    names: module names to consider (default: every nn.Linear). A module is swapped when its weight is
    bf16/fp16 (the kernel's dtypes), at least `min_sparsity` zeros, and not shared with another module
    (tied embeddings stay dense). Without a usable compiled kernel nothing is swapped and one line is logged.
    """
    if kernel.best_path() == "reference":
        log.warning("Sparse CPU kernel unavailable (%s); keeping dense nn.Linear modules.", kernel.unavailable_reason())
        return 0
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[p.data_ptr()] = owners.get(p.data_ptr(), 0) + 1
    wanted = None if names is None else set(names)
    if wanted is not None:
        missing = wanted - {n for n, _ in model.named_modules()}
        if missing:
            raise LlmpruneError(f"No module named {', '.join(sorted(missing))} in the model; pass names of nn.Linear modules.")
    swapped, skipped = 0, {"dtype": 0, "dense": 0, "tied": 0}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (wanted is not None and name not in wanted):
            continue
        w = module.weight
        if w.dtype not in KERNEL_DTYPES:
            skipped["dtype"] += 1
        elif owners.get(w.data_ptr(), 0) > 1:
            skipped["tied"] += 1
        elif zero_fraction(w) < min_sparsity:
            skipped["dense"] += 1
        else:
            _set_module(model, name, SparseLinear.from_linear(module).to(w.device))
            swapped += 1
    log.info("Swapped %d linear modules for SparseLinear (kept dense: %d not bf16/fp16, %d below %.0f%% zeros, %d tied).",
             swapped, skipped["dtype"], skipped["dense"], min_sparsity * 100, skipped["tied"])
    return swapped
