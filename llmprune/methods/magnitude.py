"""Magnitude pruning (one-shot magnitude pruning, OMP): data-free keep-masks from |W|.

Jaiswal et al. 2023 ("The Emergence of Essential Sparsity in Large Pre-trained Models") prune with one
global threshold over all prunable weights; `scope="layer"` / `"row"` give every matrix / row the same
fraction instead, and an N:M pattern keeps the largest |w| of every M consecutive inputs.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .base import LayerSpec, Method
from .masks import Threshold, iter_chunks, key_bits, kth_threshold, mask_for, threshold_mask


class GlobalMagnitude:
    """One exact threshold over many named tensors; masks can then be made tensor by tensor, in any order.

    `read(name)` returns a tensor; it is called once per name (16-bit weights) or twice (fp32 or mixed
    dtypes) while the histogram is built. Ties at the threshold are broken by sorted name, then row-major
    index, so streamed and in-memory runs give identical masks. With `finite` (weights), a tensor holding NaN
    or inf is refused by name; scores may use +inf to pin a value as kept (`finite=False`).
    """

    def __init__(self, names: Iterable[str], read: Callable[[str], torch.Tensor], dtypes: Iterable[torch.dtype],
                 numel: int, sparsity: float, finite: bool = True):
        self.names = sorted(names)
        dtypes = set(dtypes)
        self.bits = key_bits(dtypes.pop()) if len(dtypes) == 1 else 31
        self.k = round(sparsity * numel)

        def iter_keys():
            for i, name in enumerate(self.names):
                for chunk in iter_chunks(read(name)):
                    yield i, chunk

        self.threshold: Threshold = kth_threshold(iter_keys, self.k, self.bits, len(self.names),
                                                   self.names if finite else None)
        self._ties = dict(zip(self.names, self.threshold.ties))

    def mask(self, name: str, w: torch.Tensor) -> torch.Tensor:
        return threshold_mask(w, self.threshold.key, self._ties[name], self.bits)


def magnitude_mask(w: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """Keep-mask of one (out, in) weight for the per-matrix scopes and N:M patterns."""
    return mask_for(w, spec.sparsity, spec.scope, spec.pattern)


def prune(weight: torch.Tensor, stats: None, spec: LayerSpec) -> torch.Tensor:
    """The weight with its smallest |w| (per matrix, row or N:M group) set to zero; no statistics needed."""
    return weight.masked_fill(~magnitude_mask(weight, spec), 0)


METHOD = Method("magnitude", "data-free |W| (the paper's OMP with --scope global)", "none", prune,
                scopes=("global", "layer", "row"))
