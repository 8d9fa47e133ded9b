"""isp: Instant Soup Pruning (Jaiswal et al., ICML 2023): progressive pruning in which each stage's extra
pruning comes from a cheap soup of weak masks instead of one magnitude ranking.

At each stage (sparsity from the same cubic schedule as `progressive`): `weak_runs` short runs start from
the current masked weights, each on its own seeded subset of the data for `weak_fraction` of an epoch, and
each prunes by global magnitude to the stage's sparsity. Their masks are aggregated by vote (`any`,
`majority`, `all`: how many weak runs must prune a weight), fitted to the exact stage sparsity by
magnitude (`fit_scores`), and the main run trains its segment with that mask; the last segment trains
at the target sparsity. Cost: the main budget plus stages * weak_runs weak steps.
"""
from __future__ import annotations

from .base import Ticket, TicketConfig, Trainer
from .progressive import stage_steps
from .scores import fit_scores, progressive_schedule, vote_masks


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    weak_steps = max(1, round(opts.weak_fraction * tr.steps_per_epoch))
    masks, score, stages = {}, None, []
    schedule = progressive_schedule(sparsity, opts.stages)
    for i, (s, steps) in enumerate(zip(schedule, stage_steps(tr.budget, opts.stages))):
        start = tr.state()
        weak = []
        for j in range(opts.weak_runs):
            seed = tr.cfg.seed * 1000 + i * opts.weak_runs + j
            tr.train(masks, weak_steps, data=tr.subset(1.0 / opts.weak_runs, seed), seed=seed, quiet=True)
            weak.append(tr.magnitude_masks(s))
            tr.net.load_state_dict(start)
        voted = {n: vote_masks([w[n] for w in weak], opts.vote) for n in weak[0]}
        pruned = sum(int((~v).sum()) for v in voted.values())
        k = round(s * sum(v.numel() for v in voted.values()))
        params = dict(tr.params())
        masks = tr.select({n: fit_scores(v, params[n].detach(), pruned < k) for n, v in voted.items()}, s)
        stages.append({"sparsity": s, "vote_sparsity": pruned / sum(v.numel() for v in voted.values())})
        tr.apply(masks)
        score = tr.train(masks, steps)
    return tr.ticket(masks, score, weak_steps=weak_steps, stages=stages)
