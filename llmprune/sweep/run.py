"""Running a sweep: the dense model, then every (curve, level) pruned and scored on every task.

The model is loaded once (under `--max-memory`, with whatever does not fit offloaded by accelerate), and
no copy of it is ever kept: each level's weights are written over the live ones from the checkpoint on
disk (see `point.PointRunner`). The points are run in order: dense first, then every curve's levels in
increasing sparsity, so global magnitude goes up its nested levels with thresholds all found in one pass,
and an OWL curve scores the dense model's outlier ratios once, at its first level. A curve is a method
with an allocation: each allocation other than uniform is its own curve, labelled `<method>+<allocation>`
(e.g. `wanda+owl`).

`plan` lists the points; `run_sweep` is the driver: it groups them into `Work`s (one (curve, level) with
its pending tasks: pruned once, scored per task) and hands these to an executor (`executor.py`): in this
process, one after another through one `PointRunner`, or each work a Ray task on a worker that loads the
model once and keeps its own `PointRunner` (`remote.LoadAndRun`): one code path either way. The driver alone
appends to `results.jsonl`, as each work finishes (points already there are skipped, so a killed sweep
resumes), rewrites it in the grid's order at the end, and records the works that failed twice.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..config import ALLOCATIONS, PruneConfig, check_choice, check_sparsity, parse_pattern
from ..methods import get_method
from ..errors import LlmpruneError
from .point import Level, Point, Work, curve_label
from .results import DENSE, ResultsLog

log = logging.getLogger(__name__)

TASKS = ("ppl", "mmlu")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; `identity()` is the part that must match to resume a results file."""

    model: str
    tasks: tuple[str, ...] = ("ppl",)
    methods: tuple[str, ...] = ("magnitude",)
    sparsities: tuple[float, ...] = ()    # 0 may be included: it is the dense point
    patterns: tuple[str, ...] = ()
    scope: str = "global"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    epsilon: float = 1.0        # accuracy points, or percent of dense for lower-is-better metrics
    dtype: str | None = None
    seqlen: int = 2048          # perplexity window and calibration sample length
    limit: int | None = None    # MMLU questions per subject; also perplexity windows unless ppl_windows
    ppl_windows: int | None = None
    ppl_data: str | None = None
    mmlu_data: str | None = None
    subjects: tuple[str, ...] = ()
    batch_size: int = 8
    calib: str | None = None
    calib_samples: int = 128
    seed: int = 0
    allocations: tuple[str, ...] = ("uniform",)  # one curve per (method, allocation)
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for t in self.tasks:
            check_choice("task", t, TASKS)
        if not self.tasks:
            raise LlmpruneError(f"No task given: use --task with one of {', '.join(TASKS)}.")
        for m in self.methods:
            get_method(m)
        for a in self.allocations:
            check_choice("allocation", a, ALLOCATIONS)
        if self.patterns and set(self.sparsities) - {0.0}:
            raise LlmpruneError("Give either --sparsities or --pattern levels, not both (they are different curves).")
        for s in self.sparsities:
            check_sparsity(s)
        if not self.levels:
            raise LlmpruneError("No levels to prune to: give --sparsities (e.g. 0:0.9:0.1) or --pattern (e.g. 2:4).")
        for level in self.levels:  # validates every (method, allocation, level) before any weights are loaded
            for _, m, a in self.variants:
                self.prune_config(m, level, a)
        if self.epsilon < 0:
            raise LlmpruneError(f"--epsilon {self.epsilon:g} is negative: use a tolerance >= 0 (default 1).")

    @property
    def levels(self) -> list[Level]:
        """Pruned levels in increasing sparsity (sparsity 0 is the dense point, evaluated once)."""
        if self.patterns:
            pats = [parse_pattern(p) for p in dict.fromkeys(self.patterns)]
            return sorted((Level(str(p), p.sparsity, str(p)) for p in pats), key=lambda lv: lv.sparsity)
        return [Level(f"{s:g}", s) for s in self.sparsities if s > 0]

    @property
    def variants(self) -> list[tuple[str, str, str]]:
        """(curve label, method, allocation) of every curve: `wanda` for uniform, `wanda+owl` for OWL."""
        return [(curve_label(m, a), m, a) for m in self.methods for a in self.allocations]

    def prune_config(self, method: str, level: Level, allocation: str = "uniform") -> PruneConfig:
        return PruneConfig(method=method, sparsity=level.sparsity if level.pattern is None else 0.5,
                           pattern=parse_pattern(level.pattern), scope=self.scope, include=self.include,
                           exclude=self.exclude, calib=self.calib, calib_samples=self.calib_samples,
                           seqlen=self.seqlen, seed=self.seed, allocation=allocation, owl_m=self.owl_m,
                           owl_lambda=self.owl_lambda, extra=dict(self.extra))

    def identity(self) -> dict:
        """Settings that change a point's score; methods, levels and tasks may grow between runs."""
        d = asdict(self)
        for key in ("tasks", "methods", "sparsities", "patterns", "allocations", "epsilon", "batch_size", "extra"):
            d.pop(key)
        d["include"], d["exclude"], d["subjects"] = list(self.include), list(self.exclude), list(self.subjects)
        return d

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def suite_config(cfg: SweepConfig):
    """The evaluation suite's settings for a sweep (the same suite `eval` runs)."""
    from ..eval.suite import SuiteConfig

    return SuiteConfig(tasks=cfg.tasks, limit=cfg.limit, ppl_windows=cfg.ppl_windows, ppl_data=cfg.ppl_data,
                       mmlu_data=cfg.mmlu_data, subjects=cfg.subjects, batch_size=cfg.batch_size, seqlen=cfg.seqlen)


def plan(cfg: SweepConfig, done=()) -> list[Point]:
    """Every point of the sweep not in `done` (keys (curve, level label, task)), in running order."""
    points = [Point(DENSE, None, t) for t in cfg.tasks]
    points += [Point(m, lv, t, a) for _, m, a in cfg.variants for lv in cfg.levels for t in cfg.tasks]
    return [p for p in points if (*p.weights, p.task) not in done]


def grid_keys(cfg: SweepConfig) -> list[tuple[str, str, str]]:
    """(curve, level, task) of every point of the grid, in the order `results.jsonl` lists them."""
    return [(*p.weights, p.task) for p in plan(cfg)]


def works(points: list[Point]) -> list[Work]:
    """`points` grouped by the weights they score (in their order): what an executor hands out."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault(p.weights, []).append(p)
    return [Work(tuple(g)) for g in groups.values()]


def run_sweep(runner, cfg: SweepConfig, results: ResultsLog, on_point: Callable[[dict], None] | None = None,
              executor=None) -> list[dict]:
    """Score every point of `cfg` not yet in `results`; returns all of its records (works that failed twice
    are in `results.failures`, the others still run).

    `runner`: a `PointRunner` on a model loaded here, or a `remote.LoadAndRun` for workers that load it
    themselves; `executor`: a `LocalExecutor` (the default) or `RayExecutor`. A local runner's model is left
    holding the last point's weights (`runner.state`)."""
    from .executor import LocalExecutor

    points = plan(cfg, results.done)
    runner.prepare(points)  # e.g. the calibration batch: a bad source fails before any result is written

    def done(outcome) -> None:
        if not outcome.ok:
            work = outcome.item
            log.warning("%s failed after %d attempt(s): %s", work, outcome.attempts, outcome.error)
            results.fail({"method": work.curve, "level": work.level, "tasks": list(work.tasks),
                          "error": outcome.error, "attempts": outcome.attempts})
            return
        for record in outcome.value:
            results.append(record)
            if on_point:
                on_point(record)

    (executor or LocalExecutor()).run(runner.run_work, works(points), done)
    results.reorder_(grid_keys(cfg))
    return results.records


def failure_message(failures: list[dict], path) -> str:
    """One line naming the points that failed (grouped by error) and how to retry just them."""
    by_error: dict[str, list[str]] = {}
    for f in failures:
        by_error.setdefault(f["error"], []).append(DENSE if f["method"] == DENSE else f"{f['method']} {f['level']}")
    shown = "; ".join(f"{', '.join(points)}: {error}" for error, points in by_error.items())
    return (f"{len(failures)} point{'s' if len(failures) > 1 else ''} failed ({shown}); the others are in {path}. "
            "Rerun the same command to retry only the missing points.")
