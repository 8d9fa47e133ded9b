"""grasp: gradient signal preservation (Wang et al., ICLR 2020): keep the weights whose removal would cut
the gradient flow g^T g most, scored by w * Hg with H the loss Hessian, g the gradient summed over
`score_batches` batches; Hg by a Hessian-gradient product per batch (double backward)."""
from __future__ import annotations

import torch

from .base import Ticket, TicketConfig, Trainer
from .scores import grasp_scores, hessian_gradient_product
from .snip import accumulated_grads


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    names, params = zip(*tr.params())
    g = accumulated_grads(tr, opts.score_batches)
    gs = [g[n] for n in names]
    hg = [torch.zeros_like(p) for p in params]
    _eager_attention(tr.net)  # fused CPU attention kernels have no double backward
    tr.net.eval()
    for batch in tr.score_batches(opts.score_batches, seed=tr.cfg.seed):
        for acc, h in zip(hg, hessian_gradient_product(lambda: tr.net(**batch).loss, params, gs)):
            acc += h
    tr.batches += opts.score_batches  # a Hessian-gradient product costs about one more backward
    scores = {n: grasp_scores(p.detach(), h) for n, p, h in zip(names, params, hg)}
    masks = tr.select(scores, sparsity)
    return tr.ticket(masks, tr.train(masks, tr.budget))


def _eager_attention(net) -> None:
    if hasattr(net, "set_attn_implementation"):
        try:
            net.set_attn_implementation("eager")
            return
        except (ValueError, NotImplementedError):
            pass
    net.config._attn_implementation = "eager"
