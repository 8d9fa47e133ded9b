"""Counting zeros: per tensor, then rolled up globally, per decoder layer and per module type; and `inspect`'s
streamed count over a checkpoint (with where its weights came from)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    params: int = 0
    zeros: int = 0
    near_zero: int = 0
    zeros_before: int = 0

    def add(self, other: "Row") -> None:
        self.params += other.params
        self.zeros += other.zeros
        self.near_zero += other.near_zero
        self.zeros_before += other.zeros_before

    def to_json(self) -> dict:
        d = {"params": self.params, "zeros": self.zeros, "sparsity": self.zeros / self.params if self.params else 0.0}
        if self.near_zero:
            d["near_zero"] = self.near_zero
        if self.zeros_before:
            d["zeros_before"] = self.zeros_before
        return d


@dataclass
class SparsityStats:
    """Accumulates per-tensor counts; `summary()` is what run.json, inspect and the CLI show."""

    eps: float = 0.0
    tensors: dict[str, dict] = field(default_factory=dict)
    total: Row = field(default_factory=Row)
    by_type: dict[str, Row] = field(default_factory=dict)
    by_layer: dict[str, Row] = field(default_factory=dict)

    def add(self, name: str, w: torch.Tensor, layer: int | None, mtype: str, zeros_before: int = 0,
            zeros: int | None = None, **extra) -> Row:
        """Count w's zeros (unless the caller already knows them: `zeros`) and near-zeros under `eps`."""
        if zeros is None:
            zeros = w.numel() - int(torch.count_nonzero(w))
        row = Row(w.numel(), zeros, int((w.abs() <= self.eps).sum()) if self.eps > 0 else 0, zeros_before)
        self.total.add(row)
        self.by_type.setdefault(mtype, Row()).add(row)
        self.by_layer.setdefault("-" if layer is None else str(layer), Row()).add(row)
        self.tensors[name] = {"layer": layer, "type": mtype, **row.to_json(), **extra}
        return row

    def summary(self, tensors: bool = True) -> dict:
        out = {
            "global": self.total.to_json(),
            "by_type": {k: v.to_json() for k, v in sorted(self.by_type.items())},
            "by_layer": {k: v.to_json() for k, v in sorted(self.by_layer.items(), key=lambda kv: _layer_key(kv[0]))},
        }
        if tensors:
            out["tensors"] = self.tensors
        return out


def _layer_key(k: str):
    return (0, int(k)) if k.isdigit() else (1, k)


def inspect_checkpoint(model: str, eps: float = 0.0, pattern=None, include=(), exclude=(), step=None) -> dict:
    """Stream a checkpoint and count zeros (and |w| <= eps) of its prunable weights; N:M check if asked."""
    from .arch import Selector, arch_for
    from .io import Checkpoint
    from .methods.masks import satisfies_nm
    from .models import resolve_model

    from .provenance import provenance

    ckpt = Checkpoint(resolve_model(model))
    select = Selector(arch_for(ckpt.config), tuple(include), tuple(exclude))
    stats = SparsityStats(eps=eps)
    nm_ok = True
    for name in ckpt.names:
        if not select(name, ckpt.info(name).shape):
            continue
        w = ckpt.read(name)
        extra = {}
        if pattern is not None:
            extra["nm_ok"] = satisfies_nm(w, pattern.n, pattern.m)
            nm_ok &= extra["nm_ok"]
        stats.add(name, w, *select.describe(name), **extra)
        if step:
            step(name)
    summary = stats.summary()
    summary["model"] = str(model)
    summary["provenance"] = provenance(model, ckpt.path)
    allocation = _recorded_allocation(ckpt.path)
    if allocation:  # the layer sparsities the run asked for (OWL), next to the ones counted
        summary["allocation"] = allocation
        for layer, row in allocation["layers"].items():
            if layer in summary["by_layer"]:
                summary["by_layer"][layer]["target"] = row["sparsity"]
    if eps:
        summary["eps"] = eps
    if pattern is not None:
        summary["pattern"] = {"pattern": str(pattern), "satisfied": nm_ok,
                              "violating": [n for n, t in stats.tensors.items() if not t["nm_ok"]]}
    return summary


def _recorded_allocation(path) -> dict | None:
    """The per-layer allocation in the run.json a prune wrote next to the checkpoint (None when uniform)."""
    import json
    from pathlib import Path

    run = Path(path) / "run.json"
    try:
        allocation = json.loads(run.read_text()).get("allocation") if run.exists() else None
    except (OSError, ValueError, AttributeError):
        return None
    return allocation if isinstance(allocation, dict) and allocation.get("layers") else None
