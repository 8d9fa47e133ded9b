"""Running a sweep: the dense model, then every (method, level) pruned in memory and scored on every task.

The model is loaded once. A CPU copy of the prunable weights is kept, and each level starts by restoring it:
magnitude with a global threshold (the paper's OMP) applies nested masks whose thresholds all come from one
histogram pass (`levels.NestedMagnitude`); per-matrix magnitude scopes, N:M patterns and the calibration
methods (Wanda, SparseGPT) rerun `prune_model_` per level on the same calibration batch (`points.py`).
Each finished point is appended to `results.jsonl` at once; points already there are skipped, so a killed
sweep resumes. The points run on an executor (`executor.py`): here in process, or each a Ray task.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..config import METHODS, PruneConfig, check_choice, check_sparsity, parse_pattern
from ..errors import LlmpruneError
from .results import ResultsLog

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
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for t in self.tasks:
            check_choice("task", t, TASKS)
        if not self.tasks:
            raise LlmpruneError(f"No task given: use --task with one of {', '.join(TASKS)}.")
        for m in self.methods:
            check_choice("method", m, METHODS)
        if self.patterns and set(self.sparsities) - {0.0}:
            raise LlmpruneError("Give either --sparsities or --pattern levels, not both (they are different curves).")
        for s in self.sparsities:
            check_sparsity(s)
        if not self.levels:
            raise LlmpruneError("No levels to prune to: give --sparsities (e.g. 0:0.9:0.1) or --pattern (e.g. 2:4).")
        for level in self.levels:  # validates every (method, level) before any weights are loaded
            for m in self.methods:
                self.prune_config(m, level)
        if self.epsilon < 0:
            raise LlmpruneError(f"--epsilon {self.epsilon:g} is negative: use a tolerance >= 0 (default 1).")

    @property
    def levels(self) -> list[Level]:
        """Pruned levels in increasing sparsity (sparsity 0 is the dense point, evaluated once)."""
        if self.patterns:
            pats = [parse_pattern(p) for p in dict.fromkeys(self.patterns)]
            return sorted((Level(str(p), p.sparsity, str(p)) for p in pats), key=lambda lv: lv.sparsity)
        return [Level(f"{s:g}", s) for s in self.sparsities if s > 0]

    def prune_config(self, method: str, level: Level) -> PruneConfig:
        return PruneConfig(method=method, sparsity=level.sparsity if level.pattern is None else 0.5,
                           pattern=parse_pattern(level.pattern), scope=self.scope, include=self.include,
                           exclude=self.exclude, calib=self.calib, calib_samples=self.calib_samples,
                           seqlen=self.seqlen, seed=self.seed)

    def identity(self) -> dict:
        """Settings that change a point's score; methods, levels and tasks may grow between runs."""
        d = asdict(self)
        for key in ("tasks", "methods", "sparsities", "patterns", "epsilon", "batch_size", "extra"):
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
    if all(m == "magnitude" for m in cfg.methods):
        return None
    from .. import calib

    return calib.calibration_for(tokenizer, cfg, context)


def run_sweep(model: torch.nn.Module, cfg: SweepConfig, log: ResultsLog, evaluators: dict[str, Evaluator],
              calib: torch.Tensor | None = None, on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """Score the dense model and every (method, level) not yet in `log`; returns all of log's records.

    The model is pruned in place point after point (`points.PointScorer`, in this process) and restored to
    dense at the end (also on error); points that fail twice are in `log.failures`. For workers that load
    the model themselves (Ray), see `points.run_points` with `points.remote_scorer`.
    """
    from .executor import LocalExecutor
    from .points import PointScorer, nested_levels, pending_points, run_points

    scorer = PointScorer(model, cfg, evaluators, calib, nested_levels(cfg, pending_points(cfg, log.done)))
    try:
        return run_points(cfg, log, scorer, LocalExecutor(), on_point)
    finally:
        scorer.restore_()
