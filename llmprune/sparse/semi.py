"""2:4 weights on NVIDIA GPUs: torch's semi-structured sparse tensors (cuSPARSELt/CUTLASS, fp16/bf16, sm80+).

`to_semi_structured_` swaps the weight of every 2:4 nn.Linear of a CUDA model for a
`torch.sparse.SparseSemiStructuredTensor`, so `F.linear` runs the sparse tensor-core kernel. The plain
torch reference is the dense matmul of the same weight; tests compare the two on a GPU.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..methods.masks import satisfies_nm

log = logging.getLogger(__name__)


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why 2:4 semi-structured kernels cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "2:4 semi-structured kernels need a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "2:4 semi-structured kernels need an Ampere (sm80) or newer GPU"
    return None


def is_2_4(weight: torch.Tensor) -> bool:
    """True for a 2-D weight whose every 4 consecutive inputs hold at most 2 nonzeros."""
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and satisfies_nm(weight.detach(), 2, 4)


def to_semi_structured_(model: nn.Module) -> int:
    """Swap the weights of 2:4 fp16/bf16 CUDA linears for semi-structured sparse tensors; returns the count."""
    from torch.sparse import to_sparse_semi_structured

    swapped = 0
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or w is None or w.device.type != "cuda":
            continue
        if w.dtype not in (torch.float16, torch.bfloat16) or min(w.shape) < 64 or not is_2_4(w):
            continue  # the kernels need 16-bit weights and rows/cols of at least 64
        module.weight = nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
        swapped += 1
    return swapped


def use_sparse_kernels_(model: nn.Module) -> str:
    """Run a pruned model on llmprune's fastest sparse path for where it sits; returns a one-line notice."""
    device = next(model.parameters()).device
    total = sum(type(m) is nn.Linear for m in model.modules())
    if device.type == "cuda":
        reason = unavailable_reason(device)
        n = 0 if reason else to_semi_structured_(model)
        return reason + ": running dense" if reason else f"{n} of {total} linears on 2:4 semi-structured kernels"
    from .linear import swap_linears_

    n = swap_linears_(model)
    if not n:
        return "no linear could use the CPU sparse kernels (fp32 or not sparse): running dense"
    return f"{n} of {total} linears on llmprune's CPU sparse kernels" + (
        f"; the other {total - n} stay dense (too few zeros, not bf16/fp16, or tied weights; -v counts each)" if n < total else "")
