"""Frozen run configuration and the parsing/validation of user-facing values ("2:4", sparsity, scope).

Method names are checked against the registry (llmprune.methods); nothing here tests a method's name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import LlmpruneError, unknown
from .methods import LayerSpec, get_method

SCOPES = ("global", "layer", "row")
ALLOCATIONS = ("uniform", "owl")  # how the target sparsity is shared out over decoder layers (allocation.py)
FORMATS = ("dense", "sparse")


@dataclass(frozen=True)
class NMPattern:
    """At most `n` nonzeros in every `m` consecutive weights along the input dimension."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


def parse_pattern(text: str | None) -> NMPattern | None:
    """Parse "2:4" into NMPattern(2, 4); None/"" -> None (unstructured)."""
    if text is None or text == "" or text == "unstructured":
        return None
    parts = str(text).split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise LlmpruneError(f"Invalid N:M pattern '{text}'. Use two integers like 2:4, 4:8 or 1:4 (N < M).") from None
    if not (0 < n < m):
        raise LlmpruneError(f"Invalid N:M pattern '{text}': need 0 < N < M, e.g. 2:4, 4:8 or 1:4.")
    return NMPattern(n, m)


def check_sparsity(value: float) -> float:
    """Sparsity is the fraction of weights set to zero, in [0, 1)."""
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise LlmpruneError(f"Sparsity {value:g} is out of range: use a fraction in [0, 1), e.g. 0.5 for 50% zeros.")
    return value


def parse_sparsities(text: str, flag: str = "--sparsities", allow_zero: bool = True) -> tuple[float, ...]:
    """"0:0.9:0.1" (start:stop:step, stop included) or "0.5,0.6,0.7" -> sorted unique levels, each in [0, 1)
    (in (0, 1) without `allow_zero`). `flag` names the option in errors.

    Values are rounded to 6 decimals so a range gives 0.3, not 0.30000000000000004.
    """
    text = text.strip()
    low = "[0, 1)" if allow_zero else "(0, 1), 0 being the dense model"
    allowed = (f"use start:stop:step (stop included) like 0.5:0.7:0.1, or comma-separated fractions like "
               f"0.5,0.6,0.7; each in {low}.")
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise LlmpruneError(f"Invalid {flag} '{text}': need step > 0 and start <= stop; {allowed}")
            n = math.floor((stop - start) / step + 1e-9)
            values = [start + i * step for i in range(n + 1)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise LlmpruneError(f"Invalid {flag} '{text}': {allowed}") from None
    if not values:
        raise LlmpruneError(f"Invalid {flag} '{text}': no values; {allowed}")
    values = sorted({round(v, 6) for v in values})
    bad = [v for v in values if not (0.0 <= v < 1.0 if allow_zero else 0.0 < v < 1.0)]
    if bad:
        raise LlmpruneError(f"Invalid {flag} '{text}': {bad[0]:g} is out of range; {allowed}")
    return tuple(values)


def check_choice(kind: str, value: str, choices) -> str:
    if value not in choices:
        raise unknown(kind, value, choices)
    return value


def check_device(device: str, auto: bool = True) -> str:
    """cpu, cuda, cuda:N (and auto when `auto`); CUDA ones only where CUDA is available."""
    import re

    allowed = ("auto, " if auto else "") + "cpu, cuda, cuda:N"
    if not (device == "cpu" or (auto and device == "auto") or re.fullmatch(r"cuda(:\d+)?", device)):
        raise LlmpruneError(f"Unknown device '{device}'. Available: {allowed}.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise LlmpruneError(f"--device {device} was given but no CUDA device is available; use --device cpu.")
    return device


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how. `pattern` (N:M) and `sparsity` are alternatives; N:M ignores `scope`."""

    method: str = "magnitude"
    sparsity: float = 0.5
    pattern: NMPattern | None = None
    scope: str = "global"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # calibration (Wanda / SparseGPT)
    calib: str | None = None
    calib_samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    # within a layer, prune each group of linears on the inputs the pruned groups before it give (sequential.py);
    # False: every statistic from the unpruned layer, as the Wanda and SparseGPT reference drivers do
    sequential: bool = True
    # layer-wise sparsity (OWL, Yin et al. 2024): outlier threshold M x the layer's mean score, band +- lambda
    allocation: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        method = get_method(self.method)
        check_choice("scope", self.scope, SCOPES)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.pattern is None:
            check_sparsity(self.sparsity)
        for flag, value in (("--calib-samples", self.calib_samples), ("--seqlen", self.seqlen)):
            if not isinstance(value, int) or value < 1:
                raise LlmpruneError(f"Invalid {flag} {value}: use a positive integer.")
        if self.allocation != "uniform":
            if self.pattern is not None:
                raise LlmpruneError(f"--allocation {self.allocation} gives every layer its own sparsity; it does not "
                                    f"apply to an N:M --pattern (use --sparsity, or --allocation uniform).")
            if not self.owl_m > 0:
                raise LlmpruneError(f"--owl-m {self.owl_m:g} must be > 0: outliers are scores above M x the layer's mean (paper: 5).")
            if not 0 <= self.owl_lambda < 0.5:
                raise LlmpruneError(f"--owl-lambda {self.owl_lambda:g} is out of range: the largest deviation of a layer's "
                                    f"sparsity from the target, in [0, 0.5) (paper: 0.08).")
        if self.pattern is None and self.scope == "global" and (
                "global" not in method.scopes or self.allocation != "uniform"):
            # A global threshold is defined on |W| only (calibrated methods compare scores within a layer, as
            # their papers do), and OWL sets each layer's own sparsity: use the method's layer-wise scope.
            object.__setattr__(self, "scope", method.layer_scope)

    @property
    def target_sparsity(self) -> float:
        return self.pattern.sparsity if self.pattern else self.sparsity

    def describe(self) -> str:
        what = f"{self.pattern}" if self.pattern else f"{self.sparsity:.0%} ({self.scope})"
        return f"{self.method} {what}" + (f" {self.allocation}" if self.allocation != "uniform" else "")

    def layer_spec(self, sparsity: float | None = None, name: str = "") -> LayerSpec:
        """What a method's `prune` gets for one weight: this run's pattern and scope, at `sparsity` (a layer's
        own under OWL; None: the run's target)."""
        return LayerSpec(self.sparsity if sparsity is None else sparsity, self.pattern, self.scope, name)

    def to_json(self) -> dict:
        d = asdict(self)
        d["pattern"] = str(self.pattern) if self.pattern else None
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d
