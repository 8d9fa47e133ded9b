"""OWL, Outlier Weighed Layerwise sparsity: a sparsity per decoder layer from how many outliers it holds.

Yin, Wu, Zhang, et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs
to High Sparsity" (ICML 2024). A layer's outlier ratio (layerwise outlier distribution, LOD) is the
fraction of its scores above M times the layer's mean score, over all its prunable linears together; the
score is Wanda's |W| * ||X|| (or |W| for magnitude pruning). Layers with more outliers are pruned less:
the ratios are mapped linearly onto a band 2 * lambda wide, the layer with the most outliers getting the
lowest sparsity, and shifted so that the layer sparsities average to the target (here weighted by each
layer's prunable weight count, so the model's total sparsity is the target; the paper's LLaMA layers are
all the same size). Pure maths: tensors and lists of floats in, floats out.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

MAX_LAYER_SPARSITY = 0.99  # a layer's sparsity is clipped to [0, this]: a layer is never emptied


def outlier_score(weight: torch.Tensor, act_norm_sq: torch.Tensor | None = None) -> torch.Tensor:
    """OWL's score of every weight (out, in), in fp32: |W| * ||X_j||_2 (Wanda's), or |W| without activations."""
    score = weight.detach().abs().float()
    if act_norm_sq is not None:
        score *= act_norm_sq.to(score.device, torch.float32).sqrt().unsqueeze(0)  # (1, in)
    return score


def outlier_ratio(iter_scores: Callable[[], Iterable[torch.Tensor]], m: float) -> float:
    """Fraction of all entries of one layer's score tensors that exceed `m` times their common mean.

    `iter_scores()` yields the layer's score tensors (one per prunable linear); it is called twice (mean,
    then count), so a layer's scores need not all be held at once.
    """
    total, count = 0.0, 0
    for s in iter_scores():
        total += float(s.sum(dtype=torch.float64))
        count += s.numel()
    if count == 0:
        return 0.0
    threshold = m * total / count
    return sum(int((s > threshold).sum()) for s in iter_scores()) / count


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float,
                   upper: float = MAX_LAYER_SPARSITY) -> list[float]:
    """Layer sparsities from outlier ratios: a band `2 * lam` wide, fewest outliers pruned most, whose mean
    weighted by `sizes` (prunable weights per layer) is exactly `target`.

    s_i = target + mean_w(d) - d_i with d_i = 2 * lam * (r_i - min r) / (max r - min r). Values outside
    [0, upper] are clipped and the difference spread evenly over the layers left free, until none moves.
    All ratios equal (or lam 0): every layer gets the target.
    """
    if len(ratios) != len(sizes) or not ratios:
        raise ValueError("need one size per ratio, and at least one layer")
    if not 0.0 <= target <= upper:
        raise ValueError(f"target {target} outside [0, {upper}]")
    lo, hi = min(ratios), max(ratios)
    if hi == lo or lam == 0:
        return [float(target)] * len(ratios)
    n = float(sum(sizes))
    d = [2.0 * lam * (r - lo) / (hi - lo) for r in ratios]
    mean_d = sum(w * x for w, x in zip(sizes, d)) / n
    s = [target + mean_d - x for x in d]
    fixed = [False] * len(s)
    for _ in range(len(s) + 1):
        s = [min(max(x, 0.0), upper) for x in s]
        fixed = [f or x in (0.0, upper) for f, x in zip(fixed, s)]
        excess = sum(w * x for w, x in zip(sizes, s)) - target * n  # weights pruned too many (or too few)
        free = sum(w for w, f in zip(sizes, fixed) if not f)
        if abs(excess) <= 1e-12 * n or free == 0:
            break
        s = [x if f else x - excess / free for x, f in zip(s, fixed)]
    return s
