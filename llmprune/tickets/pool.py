"""lottery-pool: interpolate the tickets of several IMP rounds (Yin et al., "Lottery Pools", 2022).

IMP (as `lth`) keeps the trained weights of every round. Starting from the final ticket, earlier tickets
(latest first, down to the dense round 0) join the pool when the uniform average of the pool, masked with
the final ticket's mask, scores at least as well on held-out training examples (greedy soup). No training
steps beyond IMP's: the interpolation costs evaluations only.
"""
from __future__ import annotations

from .base import Ticket, TicketConfig, Trainer
from .lth import imp
from .scores import interpolate


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    masks, _, recs = imp(tr, sparsity, opts.rounds, keep_tickets=True)
    pool = [recs[-1]["state"]]
    best = tr.evaluate(validation=True)  # the model holds the final ticket
    joined = [recs[-1]["round"]]
    for rec in reversed(recs[:-1]):
        tr.net.load_state_dict(interpolate(pool + [rec["state"]]))
        tr.apply(masks)
        val = tr.evaluate(validation=True)
        if val >= best:
            pool.append(rec["state"])
            joined.append(rec["round"])
            best = val
    tr.net.load_state_dict(interpolate(pool))
    tr.apply(masks)
    rounds = [{k: v for k, v in r.items() if k not in ("state", "masks")} for r in recs]
    return tr.ticket(masks, None, pool_rounds=joined, val_score=best, rounds=rounds)
