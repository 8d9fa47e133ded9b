"""earlybird: draw the ticket early (You et al., ICLR 2020; EarlyBERT, Chen et al. 2021): train densely,
every `eb_every` of the budget take the global magnitude mask at the target sparsity, stop once the
distance between consecutive masks falls below `eb_eps` (or after `eb_max` of the budget), then fine-tune
the drawn ticket from the current weights for the full budget."""
from __future__ import annotations

from .base import Ticket, TicketConfig, Trainer
from .scores import early_bird_stop, mask_distance


def run(tr: Trainer, sparsity: float, opts: TicketConfig) -> Ticket:
    every = max(1, round(opts.eb_every * tr.budget))
    limit = max(every, round(opts.eb_max * tr.budget))
    masks, distances, searched = tr.magnitude_masks(sparsity), [], 0
    while searched < limit:
        tr.train({}, every, quiet=True)
        searched += every
        new = tr.magnitude_masks(sparsity)
        distances.append(mask_distance(masks, new))
        masks = new
        if early_bird_stop(distances, opts.eb_eps):
            break
    drawn = early_bird_stop(distances, opts.eb_eps)
    tr.apply(masks)
    return tr.ticket(masks, tr.train(masks, tr.budget), search_steps=searched, distances=distances, converged=drawn)
