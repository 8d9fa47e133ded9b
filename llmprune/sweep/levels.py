"""Nested global magnitude masks for many sparsities at once: one histogram pass, then any level in memory.

One-shot magnitude pruning (OMP, Jaiswal et al. 2023) with a global threshold gives nested masks: the
weights pruned at 30% are a subset of those pruned at 40%. So a sweep needs the scores (|W|) only once:
`kth_thresholds` finds every level's exact threshold from a single pass of the 15-bit histogram that
`masks.kth_threshold` builds for one level (plus, for fp32, one pass collecting the low bits of the few
bins that hold a threshold), and `NestedMagnitude` keeps a CPU copy of the prunable weights so a level is
applied by restore + re-mask, in any order, with no reload. Thresholds equal `kth_threshold`'s exactly
(same tie rule), so a sweep point equals `prune_model_` at that sparsity bit for bit.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..methods.masks import iter_chunks, key_bits, kth_thresholds, threshold_mask


class NestedMagnitude:
    """Global magnitude masks of `params` (name -> weight, pruned in place) at every sparsity in `sparsities`.

    The prunable weights are copied to CPU once (`original`); `apply_(s)` restores them and zeroes the
    k = round(s * numel) smallest |w| of the original, exactly as `GlobalMagnitude` would at sparsity s.
    """

    def __init__(self, params: dict[str, torch.Tensor], sparsities: Iterable[float]):
        self.names = sorted(params)  # GlobalMagnitude's tie order: sorted name, then row-major index
        self.params = params
        self.original = {n: params[n].detach().to("cpu", copy=True) for n in self.names}
        dtypes = {w.dtype for w in self.original.values()}
        self.bits = key_bits(dtypes.pop()) if len(dtypes) == 1 else 31
        self.numel = sum(w.numel() for w in self.original.values())
        self.sparsities = tuple(sorted(set(float(s) for s in sparsities)))
        ks = [round(s * self.numel) for s in self.sparsities]

        def iter_values():
            for i, name in enumerate(self.names):
                for chunk in iter_chunks(self.original[name]):
                    yield i, chunk

        self.thresholds = dict(zip(self.sparsities, kth_thresholds(iter_values, ks, self.bits, len(self.names), self.names)))
        self.zeros = dict(zip(self.sparsities, ks))

    @torch.no_grad()
    def restore_(self) -> None:
        """Put the original (unpruned) weights back."""
        for name in self.names:
            self.params[name].copy_(self.original[name])

    @torch.no_grad()
    def apply_(self, sparsity: float) -> float:
        """Restore, then prune to `sparsity` (one of `sparsities`); returns the fraction of weights it prunes."""
        thr = self.thresholds[float(sparsity)]
        for i, name in enumerate(self.names):
            p, w = self.params[name], self.original[name]
            p.copy_(w)
            if thr.key >= 0:
                keep = threshold_mask(w, thr.key, thr.ties[i], self.bits)
                p.masked_fill_(keep.logical_not_().to(p.device), 0)
        return self.zeros[float(sparsity)] / self.numel
