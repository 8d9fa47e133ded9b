"""The maths of the ticket methods as pure functions on tensors: importance scores, schedules, votes.

Everything here takes and returns plain tensors (or lists of floats): no models, hooks, files or logging.
Keep-masks are boolean (True = kept); scores rank weights for keeping (the largest score is kept).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

VOTES = ("any", "majority", "all")


def snip_scores(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """SNIP connection sensitivity |g * w| (Lee et al., ICLR 2019, Eq. 6 up to a global normaliser)."""
    return (grad.float() * weight.float()).abs()


def grasp_scores(weight: torch.Tensor, hg: torch.Tensor) -> torch.Tensor:
    """GraSP keep-score w * (H g) (Wang et al., ICLR 2020, Eq. 8).

    The paper scores S(-w) = -w * Hg and removes the weights with the *largest* S: removing them reduces
    the gradient flow least. Keeping the largest w * Hg is the same ranking. Signed, not a magnitude.
    """
    return weight.float() * hg.float()


def hessian_gradient_product(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                             g: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H g for the Hessian H of `loss_fn()` w.r.t. `params` and a fixed vector `g` (one tensor per param).

    Pearlmutter's trick, as GraSP computes it: differentiate z = g . grad(loss) once more.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params), create_graph=True)
    z = sum((gi.detach() * gr).sum() for gi, gr in zip(g, grads))
    return [t.detach() for t in torch.autograd.grad(z, list(params))]


def progressive_schedule(target: float, stages: int, power: float = 3.0) -> list[float]:
    """Sparsity after each of `stages` pruning steps, rising to `target` on Zhu & Gupta's (2017) cubic curve:
    s_i = target * (1 - (1 - i / stages) ** power); large steps first, while many weights are redundant."""
    if stages < 1:
        raise ValueError("stages must be at least 1")
    return [target * (1.0 - (1.0 - i / stages) ** power) for i in range(1, stages + 1)]


def imp_sparsity(rate: float, round_: int) -> float:
    """Total sparsity after `round_` IMP prunings that each remove `rate` of the remaining weights."""
    return 1.0 - (1.0 - rate) ** round_


def imp_rate(target: float, rounds: int) -> float:
    """Fraction of the remaining weights each of `rounds` IMP prunings removes to reach `target` overall."""
    return 1.0 - (1.0 - target) ** (1.0 / rounds)


def mask_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Normalised Hamming distance of two sets of keep-masks: the fraction of positions that differ
    (EarlyBird's mask distance, You et al., ICLR 2020, Sec. 4)."""
    n = sum(m.numel() for m in a.values())
    diff = sum(int((a[k] != b[k]).sum()) for k in a)
    return diff / n if n else 0.0


def early_bird_stop(distances: Sequence[float], eps: float, window: int = 1) -> bool:
    """EarlyBird's stopping rule: the last `window` distances between consecutive masks are all below `eps`."""
    return len(distances) >= window and max(distances[-window:]) < eps


def vote_masks(masks: Sequence[torch.Tensor], rule: str = "majority") -> torch.Tensor:
    """Aggregate weak keep-masks of one tensor into one (ISP's soup of masks): a weight is pruned when
    `any` weak mask prunes it, when a strict `majority` does, or only when `all` do."""
    if rule not in VOTES:
        raise ValueError(f"vote rule {rule!r}: use one of {', '.join(VOTES)}")
    pruned = torch.stack([~m.bool() for m in masks]).sum(0)  # (..) prune votes
    k = len(masks)
    need = {"any": 1, "majority": k // 2 + 1, "all": k}[rule]
    return pruned < need


def fit_scores(vote_keep: torch.Tensor, weight: torch.Tensor, prune_more_than_vote: bool) -> torch.Tensor:
    """Scores that make a vote hit an exact sparsity under one global smallest-k selection.

    When the vote prunes too few (`prune_more_than_vote`), vote-pruned weights score 0 and go first, then
    the smallest |w| of the vote-kept; when it prunes too many, vote-kept weights score +inf and only the
    smallest |w| of the vote-pruned are pruned.
    """
    w = weight.float().abs()
    if prune_more_than_vote:
        return torch.where(vote_keep, w, torch.zeros_like(w))
    return torch.where(vote_keep, torch.full_like(w, float("inf")), w)


def interpolate(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of several state dicts (Lottery Pools' interpolation); integer tensors are
    taken from the first."""
    out = {}
    for k, v in states[0].items():
        out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
    return out
