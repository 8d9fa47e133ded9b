"""progressive: gradual magnitude pruning during fine-tuning (Zhu & Gupta 2017): the budget is split into
`stages` segments; before each, the current weights are pruned by global magnitude to the next sparsity
of a cubic schedule, the last segment trains at the target."""
from __future__ import annotations

from .base import Ticket, TicketConfig, Trainer
from .scores import progressive_schedule


def stage_steps(budget: int, stages: int) -> list[int]:
    """The budget split into `stages` near-equal segments (the remainder goes to the last)."""
    base = budget // stages
    return [base] * (stages - 1) + [budget - base * (stages - 1)]


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    masks, score, path = {}, None, []
    for s, steps in zip(progressive_schedule(sparsity, opts.stages), stage_steps(tr.budget, opts.stages)):
        masks = tr.magnitude_masks(s)  # pruned weights are zeros, so masks are nested
        path.append(s)
        score = tr.train(masks, steps)
    return tr.ticket(masks, score, schedule=path)
