"""Global magnitude thresholds for many sparsities at once: one histogram pass over the checkpoint on disk.

One-shot magnitude pruning (OMP, Jaiswal et al. 2023) with a global threshold gives nested masks: the
weights pruned at 30% are a subset of those pruned at 40%. So a sweep needs the scores (|W|) only once:
`kth_thresholds` finds every level's exact threshold from a single pass of the 15-bit histogram that
`masks.kth_threshold` builds for one level (plus, for fp32, one pass collecting the low bits of the few
bins that hold a threshold). The weights are streamed from the checkpoint, never held: a level is then
applied by prune's own per-tensor code (`prune.magnitude_stream` with that threshold), so a sweep point
equals `prune --sparsity s` bit for bit (same thresholds, same tie rule).
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..io import Checkpoint, ReadAhead
from ..methods.masks import Threshold, iter_chunks, kth_thresholds
from ..prune import magnitude_bits


def global_thresholds(ckpt: Checkpoint, names: list[str], sparsities: Iterable[float]) -> dict[float, Threshold]:
    """{sparsity: the threshold `GlobalMagnitude` finds for it} over the prunable `names` of `ckpt`."""
    order = sorted(names)  # GlobalMagnitude's tie order: sorted name, then row-major index
    levels = sorted(set(float(s) for s in sparsities))
    bits = magnitude_bits(ckpt.info(n).dtype for n in order)
    numel = sum(torch.Size(ckpt.info(n).shape).numel() for n in order)

    def iter_values():
        read = ReadAhead(ckpt, order)
        for i, name in enumerate(order):
            for chunk in iter_chunks(read(name)):
                yield i, chunk

    # (with the names, a weight holding NaN or inf is refused by name, as prune refuses it)
    found = kth_thresholds(iter_values, [round(s * numel) for s in levels], bits, len(order), order)
    return dict(zip(levels, found))
