"""SparseLinear: an nn.Linear whose weight lives in the packed bitmask format, and swapping it into models.

The packed tensors sit in a small `PackedWeight` submodule named `weight`, so a SparseLinear's state_dict
keys are exactly the checkpoint keys: `<module>.weight.values`, `.bitmask`, `.row_offsets`, `.shape`
(plus `<module>.bias`). Forward runs the CPU kernel when x has at most 8 rows (token-by-token decoding)
and otherwise decodes the weight to dense and calls F.linear (prefill, GPU, fp32 weights).

`KernelLinear` is the same idea for a bf16/fp16 linear that stays dense (a tied lm_head, a layer below
the sparsity floor): an nn.Linear holding the very same weight Parameter, read by the kernel's dense
decode for 1-8 rows. Decoding a sparse model spends no time in torch's bf16 matrix-vector product, which
is slow for some shapes on CPUs.

Both keep a `kernel.Plan` (pointers into their tensors) built on first use and rebuilt whenever a tensor
moved (`.to()`, `load_state_dict`), so a decoding step costs one foreign call per linear, or one per group
of linears that read the same input (q/k/v, gate/up; learned while decoding, see shared.py).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LlmpruneError
from . import kernel, shared
from .format import SUFFIXES, check_parts, pack

log = logging.getLogger(__name__)

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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


def _kernel_rows(x: torch.Tensor, in_features: int) -> bool:
    """True when the CPU kernel takes x: 1-8 rows of fp32/bf16/fp16 on the CPU."""
    return x.is_cpu and x.dtype in X_DTYPES and 1 <= x.numel() // max(in_features, 1) <= kernel.MAX_BATCH


def _kernel_forward(module, x: torch.Tensor) -> torch.Tensor | None:
    """module's output through the CPU kernel (with its input group when it has one), or None when the
    kernel cannot take this weight."""
    path_id = kernel.best_path_id()
    if path_id is None:
        return None
    threads = torch.get_num_threads()
    if module._group is not None:
        y = module._group.run(module, x, path_id, threads)
        if y is not None:
            return y
    p = module.kernel_plan()
    if p is None:
        return None
    shared.note(module, x)
    return kernel.run_unchecked(p, x, path_id, threads)


class SparseLinear(nn.Module):
    """y = x W^T + b with W packed; a drop-in for nn.Linear at inference."""

    _group: shared.InputGroup | None = None  # siblings reading the same x (see shared.py)
    _groupable = True

    def __init__(self, parts: dict[str, torch.Tensor], bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = check_parts(parts, deep=True)
        self.weight = PackedWeight(parts)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._plan: kernel.Plan | None = None
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

    def kernel_plan(self) -> kernel.Plan | None:
        """The current Plan (rebuilt if a tensor moved), or None when the kernel cannot read this weight."""
        values = self.weight.values
        p = self._plan
        if p is not None and p.ptr == values.data_ptr():
            return p
        self._plan = None
        if values.dtype in KERNEL_DTYPES and values.device.type == "cpu" and kernel.best_path() != "reference":
            parts = {k: v.contiguous() for k, v in self.weight.parts().items()}
            self._plan = kernel.plan(parts, self.bias)
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_rows(x, self.in_features):
            y = _kernel_forward(self, x)  # (..., out)
            if y is not None:
                return y
        w = self.dense_weight()
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _apply(self, fn, recurse=True):
        self._plan = None  # .to()/.half() replace the buffers
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_loaded(module: SparseLinear, incompatible_keys) -> None:
    module._plan = None
    check_parts(module.weight.parts(), deep=True)


class KernelLinear(nn.Linear):
    """An nn.Linear (same weight and bias Parameters) whose bf16/fp16 weight the CPU kernel reads densely
    for 1-8 rows of x; other inputs go to F.linear as usual."""

    _group: shared.InputGroup | None = None
    _groupable = True

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "KernelLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight  # the same Parameter: a tied lm_head stays tied to its embedding
        new.bias = linear.bias
        return new

    def kernel_plan(self) -> kernel.Plan | None:
        w = self.weight
        p = getattr(self, "_plan", None)
        if p is not None and p.ptr == w.data_ptr() and w.dtype == p.values.dtype:
            return p
        self._plan = None
        if (w.dtype in KERNEL_DTYPES and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous()
                and kernel.best_path() != "reference"):
            self._plan = kernel.dense_plan(w.detach(), self.bias)
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_rows(x, self.in_features) and x.dtype == self.weight.dtype:
            y = _kernel_forward(self, x)
            if y is not None:
                return y
        return F.linear(x, self.weight, self.bias)

    def _apply(self, fn, recurse=True):
        self._plan = None
        return super()._apply(fn, recurse)


def zero_fraction(w: torch.Tensor) -> float:
    """Fraction of entries equal to zero (the pruned fraction of a pruned weight)."""
    return float((w == 0).sum()) / max(w.numel(), 1)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def swap_linears_(model: nn.Module, names=None, min_sparsity: float = MIN_SPARSITY, dense_kernels: bool = True) -> int:
    """Replace pruned nn.Linear modules of `model` by SparseLinear in place; return how many were replaced.

    names: module names to consider (default: every nn.Linear). A module is swapped when its weight is
    bf16/fp16 (the kernel's dtypes), at least `min_sparsity` zeros, and not shared with another module
    (tied embeddings stay dense). With `dense_kernels`, the bf16/fp16 CPU linears left dense (tied, below
    `min_sparsity`) become KernelLinear on the same weight. Without a usable compiled kernel nothing is
    swapped and one line is logged.
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
    swapped, dense_kernel, skipped = 0, 0, {"dtype": 0, "dense": 0, "tied": 0}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (wanted is not None and name not in wanted):
            continue
        w = module.weight
        if w.dtype not in KERNEL_DTYPES:
            skipped["dtype"] += 1
            continue
        tied = owners.get(w.data_ptr(), 0) > 1
        if not tied and zero_fraction(w) >= min_sparsity:
            _set_module(model, name, SparseLinear.from_linear(module).to(w.device))
            swapped += 1
            continue
        skipped["tied" if tied else "dense"] += 1
        if dense_kernels and w.device.type == "cpu" and w.is_contiguous():
            _set_module(model, name, KernelLinear.from_linear(module))
            dense_kernel += 1
    log.info("Swapped %d linear modules for SparseLinear (kept dense: %d not bf16/fp16, %d below %.0f%% zeros, %d tied; "
             "%d of those on the dense kernel).", swapped, skipped["dtype"], skipped["dense"], min_sparsity * 100,
             skipped["tied"], dense_kernel)
    return swapped
