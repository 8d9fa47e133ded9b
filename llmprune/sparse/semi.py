"""2:4 weights on NVIDIA GPUs: torch's semi-structured sparse tensors (cuSPARSELt/CUTLASS, fp16/bf16, sm80+).

`to_semi_structured_` swaps the weight of every 2:4 nn.Linear of a CUDA model for a
`torch.sparse.SparseSemiStructuredTensor`, so `F.linear` runs the sparse tensor-core kernel. The plain
torch reference is the dense matmul of the same weight; tests compare the two on a GPU.

torch rejects weights whose rows or columns are not multiples of a per-backend block (cuSPARSELt 16x16,
CUTLASS 32x64 for 16-bit weights); `shape_reason` is that rule as a pure function, and such linears stay
dense with a notice instead of failing the whole model. `use_sparse_kernels_` picks the path for where
a model sits: these kernels on CUDA, llmprune's bitmask kernels (llmprune.sparse.linear) on the CPU.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..methods.masks import satisfies_nm

log = logging.getLogger(__name__)

# (min_rows, min_cols) of the sparse weight, both also the multiple each dimension must be: the
# `_DTYPE_SHAPE_CONSTRAINTS` of torch.sparse's SparseSemiStructuredTensorCUSPARSELT / ...CUTLASS classes
SHAPE_BLOCKS = {
    "cusparselt": {torch.float16: (16, 16), torch.bfloat16: (16, 16)},
    "cutlass": {torch.float16: (32, 64), torch.bfloat16: (32, 64)},
}


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why 2:4 semi-structured kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "2:4 semi-structured kernels need a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "2:4 semi-structured kernels need an Ampere (sm80) or newer GPU"
    return None


def backend(cusparselt_available: bool) -> str:
    """torch's semi-structured backend: cuSPARSELt when the build has it, else CUTLASS."""
    return "cusparselt" if cusparselt_available else "cutlass"


def shape_reason(shape: tuple[int, int], dtype: torch.dtype, backend_name: str) -> str | None:
    """Why torch's `backend_name` semi-structured kernels reject a weight of `shape` (out, in) and `dtype`,
    or None when they take it (each dimension at least, and a multiple of, the backend's block)."""
    blocks = SHAPE_BLOCKS[backend_name]
    if dtype not in blocks:
        return f"{backend_name} 2:4 kernels take float16/bfloat16 weights, not {dtype}"
    rows, cols = shape
    min_rows, min_cols = blocks[dtype]
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return (f"{backend_name} 2:4 kernels need rows a multiple of {min_rows} and columns a multiple of "
                f"{min_cols}; this weight is {rows}x{cols}")
    return None


def is_2_4(weight: torch.Tensor) -> bool:
    """True for a 2-D weight whose every 4 consecutive inputs hold at most 2 nonzeros."""
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and satisfies_nm(weight.detach(), 2, 4)


def _backend_class(name: str):
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUSPARSELT if name == "cusparselt" else SparseSemiStructuredTensorCUTLASS


def to_semi_structured_(model: nn.Module, kept: dict[str, str] | None = None) -> int:
    """Swap the weights of 2:4 fp16/bf16 CUDA linears for semi-structured sparse tensors; returns the count.

    2:4 linears that torch's kernels reject (shape, or a failure converting) stay dense; their names and
    the reasons go into `kept` when given, and are logged. Tied weights stay dense (swapping one would untie it).
    """
    kept = {} if kept is None else kept
    name_ = backend(torch.backends.cusparselt.is_available())
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    swapped = 0
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or w is None or w.device.type != "cuda" or not is_2_4(w):
            continue
        reason = shape_reason(tuple(w.shape), w.dtype, name_)
        if reason is None and owners.get(id(w), 0) > 1:
            reason = "its weight is tied to another module"
        if reason is None:
            try:
                sparse = _backend_class(name_).from_dense(w.detach().contiguous())
            except RuntimeError as err:  # e.g. a cuSPARSELt build that cannot run on this GPU
                reason = f"{name_} failed to convert it: {str(err).splitlines()[0]}"
            else:
                module.weight = nn.Parameter(sparse, requires_grad=False)
                swapped += 1
                continue
        kept[name] = reason
        log.info("%s stays dense: %s", name, reason)
    return swapped


def use_sparse_kernels_(model: nn.Module) -> str:
    """Run a pruned model on llmprune's fastest sparse path for where it sits; returns a one-line notice."""
    device = next(model.parameters()).device
    total = sum(type(m) is nn.Linear for m in model.modules())
    if device.type == "cuda":
        reason = unavailable_reason(device)
        if reason:
            return reason + ": running dense"
        kept: dict[str, str] = {}
        n = to_semi_structured_(model, kept)
        notice = f"{n} of {total} linears on 2:4 semi-structured kernels"
        if kept:
            first = next(iter(kept.items()))
            notice += f"; {len(kept)} 2:4 linears kept dense (e.g. {first[0]}: {first[1]})"
        return notice
    from .linear import swap_linears_

    n = swap_linears_(model)
    if not n:
        return "no linear could use the CPU sparse kernels (fp32 or not sparse): running dense"
    return f"{n} of {total} linears on llmprune's CPU sparse kernels" + (
        f"; the other {total - n} stay dense (too few zeros, not bf16/fp16, or tied weights; -v counts each)" if n < total else "")
