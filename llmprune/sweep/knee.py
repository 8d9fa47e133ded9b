"""The essential-sparsity knee: pure functions, no torch, no files (grid values: `config.parse_sparsities`).

Jaiswal et al. 2023 ("The Emergence of Essential Sparsity in Large Pre-trained Models", Sec. 3) define the
essential sparsity as the sparsity up to which one-shot magnitude pruning costs "almost nothing": the
largest tested level whose performance drop from dense is within a tolerance epsilon, beyond which the
next level falls out of that band.

Drop. `performance_drop(score, dense, higher_is_better)` is how much worse than dense a score is:
- higher is better (accuracy): `dense - score`, in the score's own units (accuracy points when scores are %);
- lower is better (perplexity): `score / dense - 1`, relative (0.01 = 1% worse).
A better-than-dense score has a negative drop.

Rule for noisy, non-monotone curves. Levels are visited in increasing sparsity; the essential range ends at
the FIRST level whose drop exceeds epsilon (or whose score is missing / NaN), and the knee is the level
before it (the dense model, sparsity 0, when the very first level falls out). Levels further on that come
back inside the band are reported in `reentered` but do not extend the range: a curve that dips out at 40%
and back in at 50% has its knee at 30%. When no level falls out the knee is the last tested level and
`censored` is True: the true essential sparsity is at least that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


def performance_drop(score: float, dense: float, higher_is_better: bool) -> float:
    """How much worse than dense: absolute (dense - score) if higher is better, else relative (score/dense - 1)."""
    if higher_is_better:
        return dense - score
    return score / dense - 1.0


@dataclass(frozen=True)
class Knee:
    """The essential sparsity of one curve and what happens right after it."""

    sparsity: float                 # largest sparsity of the essential range (0.0: not even the first level)
    label: str | None               # the level's label ("0.4", "2:4"); None for the dense model
    drop: float                     # drop at the knee (0.0 for dense)
    next_sparsity: float | None     # the first level out of the band; None when censored
    next_label: str | None
    next_drop: float | None         # its drop (NaN if its score was missing)
    censored: bool                  # no level fell out: the essential sparsity is at least `sparsity`
    reentered: tuple[str, ...]      # levels past the knee that came back inside the band (noise)

    def to_json(self) -> dict:
        d = asdict(self)
        d["reentered"] = list(self.reentered)
        if d["next_drop"] is not None and math.isnan(d["next_drop"]):
            d["next_drop"] = None
        return d


def find_knee(sparsities: Sequence[float], scores: Sequence[float], dense: float, epsilon: float,
              higher_is_better: bool, labels: Sequence[str] | None = None) -> Knee:
    """The essential sparsity: the largest tested sparsity, before the first one out of the epsilon band.

    `scores[i]` is the score at `sparsities[i]` (any order: they are sorted, ties keep their given order);
    `dense` the unpruned score; a level is inside the band when `performance_drop(...) <= epsilon` (see the
    module docstring for the units and the rule on noisy curves). `labels` name the levels (default the
    sparsity as text). A drop equal to epsilon (up to float rounding) is inside.
    """
    if len(sparsities) != len(scores):
        raise ValueError(f"{len(sparsities)} sparsities but {len(scores)} scores")
    if epsilon < 0 or not math.isfinite(dense):
        raise ValueError("epsilon must be >= 0 and the dense score finite")
    labels = list(labels) if labels is not None else [f"{s:g}" for s in sparsities]
    order = sorted(range(len(sparsities)), key=lambda i: sparsities[i])
    knee = Knee(0.0, None, 0.0, None, None, None, True, ())
    for pos, i in enumerate(order):
        score = scores[i]
        drop = performance_drop(score, dense, higher_is_better) if score is not None else math.nan
        if not within_epsilon(drop, epsilon):  # NaN (missing score) is out of the band too
            back = tuple(labels[j] for j in order[pos + 1:] if scores[j] is not None
                         and within_epsilon(performance_drop(scores[j], dense, higher_is_better), epsilon))
            return Knee(knee.sparsity, knee.label, knee.drop, float(sparsities[i]), labels[i], drop, False, back)
        knee = Knee(float(sparsities[i]), labels[i], drop, None, None, None, True, ())
    return knee


def within_epsilon(drop: float, epsilon: float) -> bool:
    """drop <= epsilon, a drop equal to epsilon up to float rounding counting as inside (10.1/10 - 1 > 0.01)."""
    return drop <= epsilon + 1e-9 * max(1.0, abs(epsilon))
