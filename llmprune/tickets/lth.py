"""lth and lth-rewind: lottery tickets by iterative magnitude pruning (Frankle & Carbin 2019; for
pre-trained BERT, Chen et al. 2020): fine-tune, prune `imp_rate` of the remaining weights by global
magnitude, rewind the kept weights, repeat for `rounds` rounds; the last ticket is fine-tuned at the target.

`lth` rewinds to the pre-trained weights (and the freshly initialised head); `lth-rewind` to the weights
after the first `rewind_fraction` of dense fine-tuning (Frankle et al. 2020's late rewinding). This is the
one IMP implementation: `finetune --imp --rounds R --rate r` is `lth` at sparsity 1 - (1 - r)^R, keeping
every round's masks (`TicketConfig.keep_rounds`), as Jaiswal et al. 2023 (Sec. 4) compare them with OMP.
"""
from __future__ import annotations

from typing import Callable

import torch

from .base import Ticket, TicketConfig, Trainer
from .scores import imp_rate, imp_sparsity

OnRewind = Callable[[int, dict[str, torch.Tensor]], None]


def imp(tr: Trainer, sparsity: float, rounds: int, rewind_steps: int = 0, keep_tickets: bool = False,
        on_rewind: OnRewind | None = None, keep_masks: bool = False) -> tuple[dict[str, torch.Tensor], float, list[dict]]:
    """IMP to `sparsity` in `rounds` prunings; returns (final masks, final score, per-round records).

    Each record holds the round's sparsity and score, its trained weights and masks when `keep_tickets`,
    its masks (rounds >= 1) when `keep_masks`.
    `on_rewind(round, masks)` is called right after each rewind, before the round trains (tests use it).
    """
    rate = imp_rate(sparsity, rounds)
    steps = tr.budget - rewind_steps
    if rewind_steps:
        tr.train({}, rewind_steps, quiet=True)
    rewind = tr.state()  # pre-trained weights (rewind_steps == 0) or the early fine-tuning point
    masks, records = {}, []
    for k in range(rounds + 1):
        if k > 0:
            target = imp_sparsity(rate, k) if k < rounds else sparsity
            masks = tr.magnitude_masks(target)  # on the trained, already masked weights: nested masks
            tr.net.load_state_dict(rewind)
            tr.apply(masks)
            if on_rewind:
                on_rewind(k, masks)
        score = tr.train(masks, steps)
        rec = {"round": k, "sparsity": imp_sparsity(rate, k) if k < rounds else sparsity, "score": score}
        if keep_tickets:
            rec["state"], rec["masks"] = tr.state(), masks
        elif keep_masks and k > 0:
            rec["masks"] = masks
        records.append(rec)
    return masks, score, records


def run_lth(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    masks, score, recs = imp(tr, sparsity, opts.rounds, keep_masks=opts.keep_rounds)
    return _ticket(tr, masks, score, recs)


def run_lth_rewind(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    rewind = max(1, round(opts.rewind_fraction * tr.budget))
    masks, score, recs = imp(tr, sparsity, opts.rounds, rewind_steps=rewind, keep_masks=opts.keep_rounds)
    return _ticket(tr, masks, score, recs, rewind_steps=rewind)


def _ticket(tr: Trainer, masks, score, recs: list[dict], **info) -> Ticket:
    kept = {r["round"]: r.pop("masks") for r in recs if "masks" in r}  # tensors stay out of the record
    ticket = tr.ticket(masks, score, rounds=recs, **info)
    ticket.round_masks = kept
    return ticket
