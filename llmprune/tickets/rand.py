"""random: a keep-mask drawn uniformly at random (one global selection over seeded uniform scores).

The baseline every data- or weight-aware method must beat; it depends only on the weights' names and
shapes and the seed, never on the data or the weight values.
"""
from __future__ import annotations

import torch

from .base import Ticket, TicketConfig, Trainer


def random_scores(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Uniform scores per weight, drawn in sorted-name order from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(shapes[n], generator=gen) for n in sorted(shapes)}


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    masks = tr.select(random_scores({n: tuple(p.shape) for n, p in tr.params()}, tr.cfg.seed), sparsity)
    return tr.ticket(masks, tr.train(masks, tr.budget))
