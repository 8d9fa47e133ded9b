"""The registry of one-shot pruning methods: one file per method, one line per method below.

Every method has the contract of `base.Method`: the statistic it needs ("none", "act_norms", "hessian") and
`prune(weight, stats, spec) -> weight`. Data-free methods stream tensor by tensor (prune.py), calibrated ones
go through the layer-by-layer engine (engine.py); both look a method up here and read its fields. Masks
live in masks.py, OWL's layer-wise sparsity maths in owl.py.
"""
from __future__ import annotations

from ..errors import unknown
from . import magnitude, sparsegpt, wanda
from .base import LayerSpec, Method
from .sparsegpt import HessianStats
from .wanda import ActNormStats

REGISTRY: dict[str, Method] = {m.name: m for m in (
    magnitude.METHOD,
    wanda.METHOD,
    sparsegpt.METHOD,
)}

# statistic kind -> its accumulator: `cls(in_features, device)`, then `.add_(inputs)` per batch
STATISTICS = {"act_norms": ActNormStats, "hessian": HessianStats}


def get_method(name: str) -> Method:
    """The registered method called `name`; an error listing the available ones otherwise."""
    if name not in REGISTRY:
        raise unknown("method", name, REGISTRY)
    return REGISTRY[name]


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


__all__ = ["LayerSpec", "Method", "REGISTRY", "STATISTICS", "get_method", "method_names"]
