"""omp: one-shot global magnitude pruning of the pre-trained weights, then fine-tuning with the mask fixed
(Jaiswal et al. 2023's OMP; the same exact threshold as `llmprune prune`)."""
from __future__ import annotations

from .base import Ticket, TicketConfig, Trainer


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    masks = tr.magnitude_masks(sparsity)
    return tr.ticket(masks, tr.train(masks, tr.budget))
