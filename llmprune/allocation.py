"""How a run's target sparsity is shared out over the decoder layers: `uniform` (every layer the target) or
`owl` (Yin et al. 2024: layers with more outliers pruned less; the maths is in methods/owl.py).

OWL's layer outlier ratios must all be known before the first layer is pruned. For magnitude they come from
the weights alone (`weight_allocation`: one read pass, one layer's weights resident); for the calibrated
methods from the dense model's activations, which the engine collects in a first streamed pass without
pruning (`engine.dense_outlier_ratios`). Either way the result is an `Allocation`, recorded in run.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .config import PruneConfig
from .methods.owl import outlier_ratio, outlier_score, owl_sparsities

SCORED_ON_WEIGHTS = "weights: |W| (one read pass before pruning)"
SCORED_ON_ACTIVATIONS = ("dense activations: |W| * ||X|| from a first streamed pass over the unpruned layers, "
                         "before the pruning pass")


@dataclass(frozen=True)
class Allocation:
    """Sparsity per decoder layer index; weights outside the layer list (and every layer when uniform) get
    the run's target. `ratios` and `params` are the outlier ratio and prunable weight count of each layer."""

    kind: str = "uniform"
    layers: dict[int, float] = field(default_factory=dict)
    ratios: dict[int, float] = field(default_factory=dict)
    params: dict[int, int] = field(default_factory=dict)
    target: float | None = None
    m: float | None = None
    lam: float | None = None
    scored_on: str | None = None

    def sparsity(self, layer: int | None) -> float | None:
        """The sparsity of the weights of decoder layer `layer`; None means the run's target."""
        return self.layers.get(layer) if layer is not None else None

    def to_json(self) -> dict:
        if self.kind == "uniform":
            return {"allocation": "uniform"}
        n = sum(self.params.values())
        return {"allocation": self.kind, "target": self.target, "m": self.m, "lambda": self.lam,
                "scored_on": self.scored_on,
                "mean_sparsity": sum(self.layers[i] * self.params[i] for i in self.layers) / n if n else None,
                "layers": {str(i): {"params": self.params[i], "outlier_ratio": self.ratios[i], "sparsity": self.layers[i]}
                           for i in sorted(self.layers)}}

    @classmethod
    def from_json(cls, d: dict) -> "Allocation":
        if d.get("allocation", "uniform") == "uniform":
            return cls()
        rows = {int(i): r for i, r in d["layers"].items()}
        return cls(d["allocation"], {i: r["sparsity"] for i, r in rows.items()},
                   {i: r["outlier_ratio"] for i, r in rows.items()}, {i: r["params"] for i, r in rows.items()},
                   d["target"], d["m"], d["lambda"], d["scored_on"])


def owl_allocation(cfg: PruneConfig, ratios: dict[int, float], params: dict[int, int], scored_on: str) -> Allocation:
    """OWL's layer sparsities for `cfg` from each layer's outlier ratio and prunable weight count."""
    order = sorted(i for i in ratios if params[i] > 0)  # layers with nothing selected to prune keep nothing
    sparsities = owl_sparsities([ratios[i] for i in order], [params[i] for i in order], cfg.sparsity, cfg.owl_lambda)
    return Allocation("owl", dict(zip(order, sparsities)), {i: ratios[i] for i in order}, {i: params[i] for i in order},
                      cfg.sparsity, cfg.owl_m, cfg.owl_lambda, scored_on)


def reuse(outliers: Allocation | None, cfg: PruneConfig) -> Allocation | None:
    """`cfg`'s allocation from an earlier one's outlier ratios (same model, method, M and calibration; only
    the target or lambda differ: a sweep's levels), or None when there is none to reuse."""
    if outliers is None or outliers.kind != cfg.allocation or outliers.m != cfg.owl_m:
        return None
    return owl_allocation(cfg, outliers.ratios, outliers.params, outliers.scored_on)


def by_layer(names: Iterable[str], layer_of: Callable[[str], int | None]) -> dict[int, list[str]]:
    """{layer index: its weight names}, layers in increasing order (names outside any layer left out)."""
    groups: dict[int, list[str]] = {}
    for name in names:
        layer = layer_of(name)
        if layer is not None:
            groups.setdefault(layer, []).append(name)
    return dict(sorted(groups.items()))


def weight_allocation(cfg: PruneConfig, names: Iterable[str], layer_of: Callable[[str], int | None],
                      read: Callable[[str], torch.Tensor]) -> Allocation:
    """OWL scored on |W| (data-free methods): reads every weight once, layer after layer, holding one layer's
    weights at a time (so `read` must return tensors that stay valid, not reused buffers)."""
    ratios, params = {}, {}
    for layer, group in by_layer(names, layer_of).items():
        weights = [read(n) for n in group]
        ratios[layer] = _ratio(weights, cfg.owl_m)
        params[layer] = sum(w.numel() for w in weights)
        del weights
    return owl_allocation(cfg, ratios, params, SCORED_ON_WEIGHTS)


def _ratio(weights: list[torch.Tensor], m: float) -> float:
    return outlier_ratio(lambda: (outlier_score(w) for w in weights), m)
