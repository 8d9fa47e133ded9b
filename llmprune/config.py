"""Frozen run configuration and the parsing/validation of user-facing values ("2:4", sparsity, scope)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import LlmpruneError, unknown

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("global", "layer", "row")
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
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("scope", self.scope, SCOPES)
        if self.pattern is None:
            check_sparsity(self.sparsity)
        for flag, value in (("--calib-samples", self.calib_samples), ("--seqlen", self.seqlen)):
            if not isinstance(value, int) or value < 1:
                raise LlmpruneError(f"Invalid {flag} {value}: use a positive integer.")
        if self.method != "magnitude" and self.scope == "global" and self.pattern is None:
            # Calibration methods compare scores within a layer (Wanda: per output row); a global
            # threshold over activation-weighted scores is not what their papers define.
            object.__setattr__(self, "scope", "layer" if self.method == "sparsegpt" else "row")

    @property
    def target_sparsity(self) -> float:
        return self.pattern.sparsity if self.pattern else self.sparsity

    def describe(self) -> str:
        what = f"{self.pattern}" if self.pattern else f"{self.sparsity:.0%} ({self.scope})"
        return f"{self.method} {what}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["pattern"] = str(self.pattern) if self.pattern else None
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d
