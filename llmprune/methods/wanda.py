"""Wanda: prune by |weight| times the L2 norm of the input feature it multiplies.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models" (2023).
The score of weight W[i, j] is |W[i, j]| * ||X_j||_2, where X_j is input feature j over every calibration
token; scores are compared within each output row (the paper's choice), or within N:M groups. No weight
update. This module holds the pure maths: the activation statistic, the score and the keep-mask.
"""
from __future__ import annotations

import torch

from ..errors import LlmpruneError
from .base import LayerSpec, Method
from .masks import check_finite, mask_for


class ActNormStats:
    """Running sum over calibration tokens of x_j^2 for every input feature j, accumulated in fp32.

    Only the ranking within a row matters to Wanda, so the plain sum (not the reference's running mean)
    gives the same masks and is exactly reproducible whatever the batch split.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)  # (in,)
        self.tokens = 0

    def add_(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs (..., in); any leading dims are tokens."""
        x = x.reshape(-1, x.shape[-1]).to(self.sum_sq.device, torch.float32)  # (tokens, in)
        self.sum_sq += (x * x).sum(dim=0)
        self.tokens += x.shape[0]


def wanda_score(weight: torch.Tensor, act_norm_sq: torch.Tensor) -> torch.Tensor:
    """|W| * ||X||_2 per input column, in fp32.  weight: (out, in); act_norm_sq: (in,) sum of x^2."""
    norm = act_norm_sq.to(weight.device, torch.float32).sqrt()  # (in,)
    return weight.abs().float() * norm.unsqueeze(0)  # (out, in)


def wanda_mask(
    weight: torch.Tensor, act_norm_sq: torch.Tensor, sparsity: float, scope: str = "row", pattern=None
) -> torch.Tensor:
    """Keep-mask (out, in): lowest Wanda scores pruned per row (default), per layer, or N:M."""
    return mask_for(wanda_score(weight, act_norm_sq).cpu(), sparsity, scope=scope, pattern=pattern).to(weight.device)


def wanda_prune(
    weight: torch.Tensor, act_norm_sq: torch.Tensor, sparsity: float, scope: str = "row", pattern=None, name: str = ""
) -> torch.Tensor:
    """New weight (same dtype) with the Wanda-pruned entries set to zero; NaN/inf weights or activation
    statistics are refused (naming `name`), as no score ranks them."""
    check_finite(name, weight)
    if not bool(torch.isfinite(act_norm_sq).all()):
        raise LlmpruneError(f"Wanda: the calibration activations feeding '{name or '?'}' overflowed (NaN/inf); "
                            "run in float32 or check the weights before this layer.")
    keep = wanda_mask(weight, act_norm_sq, sparsity, scope=scope, pattern=pattern)
    return weight.masked_fill(~keep, 0)


def prune(weight: torch.Tensor, stats: ActNormStats, spec: LayerSpec) -> torch.Tensor:
    """The registry's entry point: `wanda_prune` with the layer's activation norms and spec."""
    return wanda_prune(weight, stats.sum_sq, spec.sparsity, spec.scope, spec.pattern, name=spec.name)


METHOD = Method("wanda", "|W| * ||X|| per output row (Sun et al. 2023)", "act_norms", prune, scopes=("row", "layer"))
