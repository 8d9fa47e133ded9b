"""Comparing the keep-masks of two pruned checkpoints: cosine similarity and IoU, per layer and overall.

A pruned directory's keep-mask is its nonzeros over the prunable weights (the architecture table's
`Selector`). Two binary masks `a`, `b` are compared as 0/1 vectors (Jaiswal et al. 2023, Fig. 6 compare
OMP and lottery-ticket masks this way):

    cosine = |a & b| / sqrt(|a| * |b|)        IoU = |a & b| / |a | b|

Counting is a pure function of two mask tensors; `compare_dirs` streams both checkpoints tensor by tensor
with `io.Checkpoint`, so two models are never resident. Tensors are matched by (layer index, module path
inside the layer), so a masked-LM checkpoint (`bert.encoder.layer.0...`) and a fine-tuned classifier
(`encoder.layer.0...` under another prefix) of the same architecture compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import Selector, arch_for
from .errors import LlmpruneError
from .io import Checkpoint
from .models import resolve_model


@dataclass(frozen=True)
class MaskCounts:
    """Sizes of two keep-masks over the same `n` positions: `a` and `b` kept, `both` kept by each."""

    n: int = 0
    a: int = 0
    b: int = 0
    both: int = 0

    def __add__(self, other: "MaskCounts") -> "MaskCounts":
        return MaskCounts(self.n + other.n, self.a + other.a, self.b + other.b, self.both + other.both)

    @property
    def cosine(self) -> float:
        """Cosine of the 0/1 vectors; 1.0 when both masks are empty (identical), 0.0 when only one is."""
        if self.a == 0 or self.b == 0:
            return 1.0 if self.a == self.b == 0 else 0.0
        return self.both / math.sqrt(self.a * self.b)

    @property
    def iou(self) -> float:
        union = self.a + self.b - self.both
        return self.both / union if union else 1.0

    @property
    def agreement(self) -> float:
        """Fraction of positions where the masks agree (kept by both or pruned by both)."""
        return (self.n - (self.a + self.b - 2 * self.both)) / self.n if self.n else 1.0

    def to_json(self) -> dict:
        return {"params": self.n, "kept_a": self.a, "kept_b": self.b, "kept_both": self.both,
                "sparsity_a": 1 - self.a / self.n if self.n else 0.0, "sparsity_b": 1 - self.b / self.n if self.n else 0.0,
                "cosine": self.cosine, "iou": self.iou, "agreement": self.agreement}


def mask_counts(a: torch.Tensor, b: torch.Tensor) -> MaskCounts:
    """Counts of two boolean keep-masks of the same shape."""
    if a.shape != b.shape:
        raise LlmpruneError(f"Mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    return MaskCounts(a.numel(), int(a.sum()), int(b.sum()), int((a & b).sum()))


def mask_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two boolean keep-masks."""
    return mask_counts(a, b).cosine


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean keep-masks."""
    return mask_counts(a, b).iou


def prunable_keys(ckpt: Checkpoint) -> dict[tuple[int, str], str]:
    """{(layer, leaf module path): tensor name} of the prunable weights of a checkpoint."""
    spec = arch_for(ckpt.config)
    select = Selector(spec)
    keys = {}
    for name in ckpt.names:
        if select(name, ckpt.info(name).shape):
            keys[spec.locate(name)] = name
    return keys


def compare_dirs(a: str | Path, b: str | Path) -> dict:
    """Per-layer, per-module-type and overall mask similarity of two pruned checkpoints (same architecture)."""
    ca, cb = Checkpoint(resolve_model(a)), Checkpoint(resolve_model(b))
    fa, fb = arch_for(ca.config).family, arch_for(cb.config).family
    if fa != fb:
        raise LlmpruneError(f"Cannot compare masks of different architectures: {a} is {fa}, {b} is {fb}.")
    ka, kb = prunable_keys(ca), prunable_keys(cb)
    if set(ka) != set(kb):
        only = sorted(set(ka) ^ set(kb))[:3]
        raise LlmpruneError(f"{a} and {b} have different prunable weights (e.g. layer/module {only}); "
                            f"masks compare only between checkpoints of the same model shape.")
    spec = arch_for(ca.config)
    total, by_layer, by_type, tensors = MaskCounts(), {}, {}, {}
    for key in sorted(ka):
        na, nb = ka[key], kb[key]
        if ca.info(na).shape != cb.info(nb).shape:
            raise LlmpruneError(f"Shape of {na} differs: {ca.info(na).shape} in {a} vs {cb.info(nb).shape} in {b}.")
        c = mask_counts(ca.read(na) != 0, cb.read(nb) != 0)
        layer, mtype = str(key[0]), spec.module_type(key[1])
        total = total + c
        by_layer[layer] = by_layer.get(layer, MaskCounts()) + c
        by_type[mtype] = by_type.get(mtype, MaskCounts()) + c
        tensors[na] = c.to_json()
    return {"a": str(a), "b": str(b), "global": total.to_json(),
            "by_layer": {k: v.to_json() for k, v in sorted(by_layer.items(), key=lambda kv: int(kv[0]))},
            "by_type": {k: v.to_json() for k, v in sorted(by_type.items())}, "tensors": tensors}
