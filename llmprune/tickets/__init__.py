"""Task-aware pruning during fine-tuning: a registry of ticket methods sharing one training loop.

Each method is a small module with `run(trainer, sparsity, opts) -> Ticket` (base.py): random, omp,
progressive, snip, grasp, earlybird, lth, lth-rewind, lottery-pool and isp (Instant Soup Pruning,
Jaiswal et al., ICML 2023). Their maths is pure (scores.py); run.py runs one method end to end
(`finetune --method`) and compare.py the method x sparsity x seed grid (`compare-methods`).
"""
from __future__ import annotations

from typing import Callable

from ..errors import unknown
from . import earlybird, grasp, isp, lth, omp, pool, progressive, rand, snip
from .base import Ticket, TicketConfig, Trainer

Method = Callable[[Trainer, float, TicketConfig], Ticket]

METHODS: dict[str, Method] = {
    "random": rand.run, "omp": omp.run, "progressive": progressive.run, "snip": snip.run, "grasp": grasp.run,
    "earlybird": earlybird.run, "lth": lth.run_lth, "lth-rewind": lth.run_lth_rewind, "lottery-pool": pool.run,
    "isp": isp.run,
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


__all__ = ["METHODS", "Method", "Ticket", "TicketConfig", "Trainer", "get_method"]
