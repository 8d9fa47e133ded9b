"""Pure statistics over weight tensors: no files, no plotting, no printing.

A `Tally` is what one tensor (or a group of tensors) contributes: parameter count, exact zeros, near-zeros
`|w| <= eps` for one or more eps, weights a magnitude mask removes, and a histogram of |w| on fixed
log-spaced bins. Fixed bins make tallies additive, so a checkpoint is summarised tensor by tensor and the
per-layer / per-module-type views are sums of per-tensor tallies (`roll_up`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch


def log_edges(lo: float = 1e-6, hi: float = 10.0, per_decade: int = 10) -> torch.Tensor:
    """Bin edges lo, ..., hi spaced evenly in log10 (`per_decade` bins per factor of 10), float64."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    n = round(per_decade * (torch.log10(torch.tensor(hi)) - torch.log10(torch.tensor(lo))).item())
    return torch.logspace(torch.log10(torch.tensor(lo)).item(), torch.log10(torch.tensor(hi)).item(), n + 1,
                          dtype=torch.float64)


def magnitude_histogram(w: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of |w| per bin, int64 of length len(edges) + 1.

    Entry 0 counts |w| < edges[0] (exact zeros included), entry i counts edges[i-1] <= |w| < edges[i], and
    the last entry counts |w| >= edges[-1].
    """
    # fp32 on both sides, so a weight equal to an edge (as stored) falls in the bin the edge opens
    a = w.detach().reshape(-1).float().abs()
    idx = torch.bucketize(a, edges.float(), right=True)  # (numel,) in [0, len(edges)]
    return torch.bincount(idx, minlength=len(edges) + 1)


def count_near_zero(w: torch.Tensor, eps: float) -> int:
    """Number of weights with |w| <= eps (eps=0 counts exact zeros); computed in fp32."""
    return int((w.detach().float().abs() <= eps).sum())


@dataclass
class Tally:
    """Additive counts for a tensor or a group of tensors (see module docstring)."""

    params: int = 0
    zeros: int = 0
    near_zero: dict[float, int] = field(default_factory=dict)
    removed: int = 0                    # weights a magnitude keep-mask sets to zero (0 when no mask was given)
    hist: torch.Tensor | None = None    # (len(edges) + 1,) int64 counts, or None when not histogrammed

    def add(self, other: "Tally") -> "Tally":
        self.params += other.params
        self.zeros += other.zeros
        self.removed += other.removed
        for e, n in other.near_zero.items():
            self.near_zero[e] = self.near_zero.get(e, 0) + n
        if other.hist is not None:
            self.hist = other.hist.clone() if self.hist is None else self.hist + other.hist
        return self

    def to_json(self) -> dict:
        p = self.params or 1
        d = {"params": self.params, "zeros": self.zeros, "zero_share": self.zeros / p,
             "near_zero": {f"{e:g}": n for e, n in sorted(self.near_zero.items())},
             "near_zero_share": {f"{e:g}": n / p for e, n in sorted(self.near_zero.items())},
             "omp_removed": self.removed, "omp_removed_share": self.removed / p}
        if self.hist is not None:
            d["hist"] = self.hist.tolist()
        return d


def tally(w: torch.Tensor, eps: tuple[float, ...] = (), keep: torch.Tensor | None = None,
          edges: torch.Tensor | None = None) -> Tally:
    """The Tally of one weight; `keep` is a keep-mask (True = kept) whose dropped weights count as removed."""
    zeros = w.numel() - int(torch.count_nonzero(w))
    near = {float(e): count_near_zero(w, e) for e in eps}
    removed = 0 if keep is None else keep.numel() - int(keep.sum())
    hist = None if edges is None else magnitude_histogram(w, edges)
    return Tally(w.numel(), zeros, near, removed, hist)


def roll_up(tensors: dict[str, tuple[int | None, str, Tally]]) -> dict:
    """Sum per-tensor tallies {name: (layer, module type, Tally)} into the views the figures need.

    Returns {"global": Tally, "by_type": {type: Tally}, "by_layer": {layer: Tally},
    "by_layer_type": {layer: {type: Tally}}}; layers are ints (None for weights outside the layer list),
    keys sorted.
    """
    total, by_type, by_layer, by_lt = Tally(), {}, {}, {}
    for layer, mtype, t in tensors.values():
        total.add(t)
        by_type.setdefault(mtype, Tally()).add(t)
        by_layer.setdefault(layer, Tally()).add(t)
        by_lt.setdefault(layer, {}).setdefault(mtype, Tally()).add(t)
    order = lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0)  # noqa: E731
    return {"global": total, "by_type": dict(sorted(by_type.items())),
            "by_layer": dict(sorted(by_layer.items(), key=order)),
            "by_layer_type": {k: dict(sorted(v.items())) for k, v in sorted(by_lt.items(), key=order)}}


def normalised(hist: torch.Tensor) -> torch.Tensor:
    """Counts -> fraction of all counted weights per bin (sums to 1; zeros when empty)."""
    total = hist.sum()
    return hist.double() / total if total > 0 else hist.double()


_STEP = re.compile(r"(?:^|[-_])(?:checkpoint|step|ckpt)[-_]?(\d+)$")


def step_of(path: str | Path) -> int | None:
    """Training step named by a folder (`checkpoint-500`, `step_500`, `ckpt500`), else None."""
    m = _STEP.search(Path(path).name)
    return int(m.group(1)) if m else None
