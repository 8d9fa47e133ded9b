"""Running a sweep: the dense model, then every (method, level) pruned in memory and scored on every task.

The model is loaded once. A CPU copy of the prunable weights is kept, and each level starts by restoring it:
magnitude with a global threshold (the paper's OMP) applies nested masks whose thresholds all come from one
histogram pass (`levels.NestedMagnitude`); per-matrix magnitude scopes, N:M patterns, OWL allocations and
the calibration methods (Wanda, SparseGPT) rerun `prune_model_` per level on the same calibration batch.
Each allocation other than uniform is its own curve, labelled `<method>+<allocation>` (e.g. `wanda+owl`). Each finished
point is appended to `results.jsonl` at once; points already there are skipped, so a killed sweep resumes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..config import ALLOCATIONS, PruneConfig, check_choice, check_sparsity, parse_pattern
from ..allocation import Allocation
from ..methods import get_method
from ..errors import LlmpruneError
from .levels import NestedMagnitude
from .results import DENSE, ResultsLog

TASKS = ("ppl", "mmlu")
Evaluator = Callable[[torch.nn.Module], dict]


@dataclass(frozen=True)
class Level:
    """One grid point: an unstructured sparsity, or an N:M pattern (whose sparsity is 1 - N/M)."""

    label: str
    sparsity: float
    pattern: str | None = None


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
        return [(m if a == "uniform" else f"{m}+{a}", m, a) for m in self.methods for a in self.allocations]

    def prune_config(self, method: str, level: Level, allocation: str = "uniform") -> PruneConfig:
        return PruneConfig(method=method, sparsity=level.sparsity if level.pattern is None else 0.5,
                           pattern=parse_pattern(level.pattern), scope=self.scope, include=self.include,
                           exclude=self.exclude, calib=self.calib, calib_samples=self.calib_samples,
                           seqlen=self.seqlen, seed=self.seed, allocation=allocation, owl_m=self.owl_m,
                           owl_lambda=self.owl_lambda)

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


def prepare_mmlu(cfg: SweepConfig):
    """Read and check the MMLU questions (before any weights load); returns lm-eval's TaskManager or None."""
    if "mmlu" not in cfg.tasks:
        return None
    from ..eval.lmeval import task_manager
    from ..eval.mmlu import load_questions, select, write_task_dir

    folder = write_task_dir(select(load_questions(cfg.mmlu_data), list(cfg.subjects) or None))
    return task_manager(folder, include_defaults=False)


def default_evaluators(cfg: SweepConfig, tokenizer, mmlu_manager=None) -> dict[str, Evaluator]:
    """task -> function(model) -> metrics, for the tasks of `cfg` (texts and questions read once)."""
    out: dict[str, Evaluator] = {}
    if "ppl" in cfg.tasks:
        from ..data import load_text
        from ..eval.ppl import perplexity

        text = load_text(cfg.ppl_data, "test")
        windows = cfg.ppl_windows if cfg.ppl_windows is not None else cfg.limit
        out["ppl"] = lambda m: perplexity(m, tokenizer, text, seqlen=cfg.seqlen, batch_size=cfg.batch_size,
                                          max_windows=windows).to_json()
    if "mmlu" in cfg.tasks:
        from ..eval.lmeval import run_tasks
        from ..eval.mmlu import summarize

        manager = mmlu_manager or prepare_mmlu(cfg)
        out["mmlu"] = lambda m: _without_subjects(summarize(run_tasks(
            m, tokenizer, ["mmlu"], limit=cfg.limit, num_fewshot=0, batch_size=cfg.batch_size, manager=manager)))
    return out


def _without_subjects(summary: dict) -> dict:
    summary["subjects"] = {s: {"accuracy": v["accuracy"], "questions": v["questions"]} for s, v in summary["subjects"].items()}
    return summary


def calibration_for(cfg: SweepConfig, tokenizer, context: int | None = None) -> torch.Tensor | None:
    """The one calibration batch every calibrated level reuses (None when only magnitude runs)."""
    if not any(get_method(m).calibrated for m in cfg.methods):
        return None
    from .. import calib

    return calib.calibration_for(tokenizer, cfg, context)


def run_sweep(model: torch.nn.Module, cfg: SweepConfig, log: ResultsLog, evaluators: dict[str, Evaluator],
              calib: torch.Tensor | None = None, on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """Score the dense model and every (method, level) not yet in `log`; returns all of log's records.

    The model is pruned in place level after level and restored to dense at the end (also on error).
    """
    from ..arch import Selector, arch_for

    done = log.done

    def score(method: str, level: Level | None, actual: float, prune_s: float, todo: list[str]) -> None:
        for task in todo:
            t0 = time.perf_counter()
            metrics = evaluators[task](model)
            record = {"method": method, "level": level.label if level else DENSE,
                      "sparsity": level.sparsity if level else 0.0, "actual_sparsity": actual, "task": task,
                      "metrics": metrics, "seconds": {"prune": prune_s, "eval": time.perf_counter() - t0},
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            log.append(record)
            prune_s = 0.0  # charged to the level's first task only
            if on_point:
                on_point(record)

    score(DENSE, None, 0.0, 0.0, [t for t in cfg.tasks if (DENSE, DENSE, t) not in done])
    todo = {(label, m, a, lv): [t for t in cfg.tasks if (label, lv.label, t) not in done]
            for label, m, a in cfg.variants for lv in cfg.levels}
    todo = {k: v for k, v in todo.items() if v}
    if not todo:
        return log.records
    select = Selector(arch_for(model.config), cfg.include, cfg.exclude)
    params = {n: p.data for n, p in model.named_parameters() if select(n, tuple(p.shape))}
    if not params:
        raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
    # a global scope is one exact |W| threshold over the model (magnitude's OMP): nested masks, one histogram
    nested = {k: cfg.prune_config(k[1], k[3], k[2]).scope == "global" and k[3].pattern is None for k in todo}
    t0 = time.perf_counter()
    weights = NestedMagnitude(params, [k[3].sparsity for k in todo if nested[k]])  # the CPU copy; nested thresholds
    setup_s = time.perf_counter() - t0
    outliers = {}  # method -> its OWL allocation at an earlier level: the dense model's outlier ratios, reused
    try:
        for (label, method, allocation, level), tasks in todo.items():
            t0 = time.perf_counter()
            if nested[(label, method, allocation, level)]:
                actual = weights.apply_(level.sparsity)
            else:
                from ..prune import prune_model_

                weights.restore_()
                summary = prune_model_(model, cfg.prune_config(method, level, allocation), calib, outliers=outliers.get(method))
                if "allocation" in summary:
                    outliers[method] = Allocation.from_json(summary["allocation"])
                actual = summary["global"]["sparsity"]
            score(label, level, actual, time.perf_counter() - t0 + setup_s, tasks)
            setup_s = 0.0
    finally:
        weights.restore_()
    return log.records
