"""The contract every one-shot pruning method fulfils, and the per-weight spec it is called with.

A method names the statistic of a layer's inputs it needs (`stats`: "none", "act_norms" or "hessian") and
provides `prune(weight, stats, spec) -> new weight`, the same arguments for all: the (out, in) weight, the
statistics object collected for that weight's inputs (None for "none"), and a `LayerSpec`. The callers
(prune.py for data-free methods, engine.py and streaming.py for calibrated ones) dispatch on these fields only, never on a
method's name; the registry (`methods/__init__.py`) lists the methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

STATS_KINDS = ("none", "act_norms", "hessian")


@dataclass(frozen=True)
class LayerSpec:
    """How to prune one weight: its `sparsity` (or N:M `pattern`, which then wins), the `scope` its scores are
    compared within ("layer": the whole matrix, "row": each output row), and its name (for errors and logs)."""

    sparsity: float
    pattern: object | None = None  # config.NMPattern (n, m)
    scope: str = "layer"
    name: str = ""


@dataclass(frozen=True)
class Method:
    """One one-shot method. `scopes` are the scopes it accepts; "global" (one exact |W| threshold over the
    whole model) only where the method's score is |W| itself. Under OWL a data-free method's layer outlier
    ratios are scored on |W|, a calibrated one's on Wanda's |W| * ||X|| from the dense model."""

    name: str
    summary: str
    stats: str
    prune: Callable[[torch.Tensor, object, LayerSpec], torch.Tensor]
    scopes: tuple[str, ...]
    # optional: prune several weights that read the same inputs (q/k/v, gate/up: one statistics object) in
    # one go, with the results of `prune` on each; the engine calls it where a layer has such a group
    prune_shared: Callable[[list[torch.Tensor], object, list[LayerSpec]], list[torch.Tensor]] | None = None

    def __post_init__(self):
        if self.stats not in STATS_KINDS:
            raise ValueError(f"method {self.name}: stats must be one of {STATS_KINDS}")

    @property
    def calibrated(self) -> bool:
        """Whether it needs calibration data (then it runs on the layer-by-layer engine)."""
        return self.stats != "none"

    @property
    def layer_scope(self) -> str:
        """The scope used when a global threshold does not apply (calibrated methods, OWL's per-layer sparsities)."""
        return next(s for s in self.scopes if s != "global")
