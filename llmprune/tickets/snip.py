"""snip: connection sensitivity before training (Lee et al., ICLR 2019): keep the weights with the largest
|g * w|, g the loss gradient summed over `score_batches` training batches at the pre-trained weights."""
from __future__ import annotations

import torch

from .base import Ticket, TicketConfig, Trainer
from .scores import snip_scores


def accumulated_grads(tr: Trainer, batches: int) -> dict[str, torch.Tensor]:
    """Loss gradients of the prunable weights summed over `batches` batches (eval mode: no dropout)."""
    params = tr.params()
    tr.net.eval()
    tr.net.zero_grad(set_to_none=True)
    for batch in tr.score_batches(batches):
        tr.net(**batch).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in params}
    tr.net.zero_grad(set_to_none=True)
    return grads


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    grads = accumulated_grads(tr, opts.score_batches)
    scores = {n: snip_scores(p.detach(), grads[n]) for n, p in tr.params()}
    masks = tr.select(scores, sparsity)
    return tr.ticket(masks, tr.train(masks, tr.budget))
