"""A sweep's points and the work of one point: prune a loaded model to a (method, level), score its tasks.

A `Point` is the dense model or one method at one level, with the tasks still to score there; it is what
an executor (`executor.py`) runs. `PointScorer` does one point on a model it holds: magnitude with a
global threshold (the paper's OMP) applies nested masks whose thresholds all come from one histogram pass
(`levels.NestedMagnitude`, made at the first pruned point and kept); per-matrix scopes, N:M patterns and
the calibration methods rerun `prune_model_` on the same calibration batch. `LoadAndScore` is the
picklable form a remote worker runs: it loads the model as `llmprune sweep` does, once per worker
process, and keeps its `PointScorer` for the next point that process gets, so levels that land in the
same worker share the load and the histogram pass.

`run_points` is the driver: it alone appends to `results.jsonl` (as each point finishes, so a killed
driver loses only points still running), rewrites it in the grid's order at the end, and records the
points that failed twice.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import LlmpruneError
from .results import DENSE, ResultsLog
from .run import Evaluator, Level, SweepConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """The dense model (`level` None) or `method` at `level`, and the tasks to score there."""

    method: str
    level: Level | None
    tasks: tuple[str, ...]

    def __str__(self) -> str:
        return DENSE if self.level is None else f"{self.method} {self.level.label}"


def pending_points(cfg: SweepConfig, done) -> list[Point]:
    """Dense first, then every (method, level) in the grid's order, each with its tasks not yet in `done`."""
    points = [Point(DENSE, None, tuple(t for t in cfg.tasks if (DENSE, DENSE, t) not in done))]
    points += [Point(m, lv, tuple(t for t in cfg.tasks if (m, lv.label, t) not in done))
               for m in cfg.methods for lv in cfg.levels]
    return [p for p in points if p.tasks]


def grid_keys(cfg: SweepConfig) -> list[tuple[str, str, str]]:
    """(method, level, task) of every point of the grid, in the order `results.jsonl` lists them."""
    return [(DENSE, DENSE, t) for t in cfg.tasks] + [(m, lv.label, t) for m in cfg.methods for lv in cfg.levels
                                                     for t in cfg.tasks]


def nested_levels(cfg: SweepConfig, points: list[Point]) -> tuple[float, ...]:
    """Sparsities whose global magnitude masks come from the one shared histogram pass."""
    if cfg.scope != "global":
        return ()
    return tuple(p.level.sparsity for p in points if p.method == "magnitude" and p.level and p.level.pattern is None)


class PointScorer:
    """Prunes `model` (in place) to any point of the sweep and scores it; `restore_` puts the dense weights back."""

    def __init__(self, model: torch.nn.Module, cfg: SweepConfig, evaluators: dict[str, Evaluator],
                 calib: torch.Tensor | None = None, nested: tuple[float, ...] = ()):
        self.model, self.cfg, self.evaluators, self.calib, self.nested = model, cfg, evaluators, calib, tuple(nested)
        self.weights = None  # NestedMagnitude: the CPU copy of the prunable weights and the nested thresholds

    def _weights(self):
        from ..arch import Selector, arch_for
        from .levels import NestedMagnitude

        if self.weights is None:
            select = Selector(arch_for(self.model.config), self.cfg.include, self.cfg.exclude)
            params = {n: p.data for n, p in self.model.named_parameters() if select(n, tuple(p.shape))}
            if not params:
                raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
            self.weights = NestedMagnitude(params, self.nested)
        return self.weights

    def prune_(self, point: Point) -> float:
        """Put the model at `point` (restoring first); returns the fraction of prunable weights it prunes."""
        if point.level is None:
            self.restore_()
            return 0.0
        weights, level = self._weights(), point.level
        if point.method == "magnitude" and level.pattern is None and level.sparsity in weights.thresholds:
            return weights.apply_(level.sparsity)
        from ..prune import prune_model_

        weights.restore_()
        pcfg = self.cfg.prune_config(point.method, level)
        return prune_model_(self.model, pcfg, self.calib if point.method != "magnitude" else None)["global"]["sparsity"]

    def __call__(self, point: Point) -> list[dict]:
        """The point's records, one per task: metrics, actual sparsity and seconds (prune charged to the first)."""
        t0 = time.perf_counter()
        actual = self.prune_(point)
        prune_s, records = time.perf_counter() - t0, []
        for task in point.tasks:
            t0 = time.perf_counter()
            metrics = self.evaluators[task](self.model)
            level = point.level
            records.append({"method": point.method, "level": level.label if level else DENSE,
                            "sparsity": level.sparsity if level else 0.0, "actual_sparsity": actual, "task": task,
                            "metrics": metrics, "seconds": {"prune": prune_s, "eval": time.perf_counter() - t0},
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            prune_s = 0.0
        return records

    def restore_(self) -> None:
        if self.weights is not None:
            self.weights.restore_()


_LOADED: dict = {}  # this worker process's PointScorer, by what it was loaded for (one at a time)


@dataclass(frozen=True)
class LoadAndScore:
    """The per-point function of a remote worker: load the model (once per process), then `PointScorer`.

    `cfg` names the model and data by paths every node can see (or Hub ids / built-in names, which each
    node resolves through its own cache). `spread` places a model over all the GPUs Ray gave the point.
    """

    cfg: SweepConfig
    device: str = "cpu"
    nested: tuple[float, ...] = ()
    threads: int | None = None
    spread: bool = False

    def __call__(self, point: Point) -> list[dict]:
        t0 = time.perf_counter()
        key = (repr(self), _fingerprint(self.cfg.model))
        loaded = key in _LOADED
        if not loaded:
            _LOADED.clear()  # a new sweep in this process: drop the last model first
            _LOADED[key] = self._load()
        load_s = 0.0 if loaded else time.perf_counter() - t0
        records = _LOADED[key](point)
        for r in records:
            r["seconds"]["load"] = load_s
            load_s = 0.0
        return records

    def _load(self) -> PointScorer:
        from ..calib import context_length
        from ..models import load_model
        from .run import calibration_for, default_evaluators, prepare_mmlu

        if self.threads:
            torch.set_num_threads(self.threads)
        cfg = self.cfg
        kwargs = {"device_map": "auto"} if self.spread else {}
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=self.device, **kwargs)
        if tok is None:
            raise LlmpruneError(f"{cfg.model} has no tokenizer: a sweep scores a language model with one.")
        evaluators = default_evaluators(cfg, tok, prepare_mmlu(cfg))
        return PointScorer(model, cfg, evaluators, calibration_for(cfg, tok, context_length(model.config)), self.nested)


def _fingerprint(model: str) -> tuple:
    """Names, sizes and mtimes of a local checkpoint's files, so a rewritten checkpoint is loaded afresh."""
    path = Path(model)
    if not path.is_dir():
        return (model,)
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())


def for_workers(cfg: SweepConfig) -> SweepConfig:
    """`cfg` with local model and data paths made absolute (a worker's working directory is not the driver's)."""
    def absolute(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    return dataclasses.replace(cfg, model=absolute(cfg.model), ppl_data=absolute(cfg.ppl_data),
                               mmlu_data=absolute(cfg.mmlu_data), calib=absolute(cfg.calib))


def remote_scorer(cfg: SweepConfig, points: list[Point], device: str, cpus_per_point: float,
                  gpus_per_point: float) -> LoadAndScore:
    """The picklable per-point function for workers that load the model themselves."""
    return LoadAndScore(for_workers(cfg), device, nested_levels(cfg, points), threads=max(1, int(cpus_per_point)),
                        spread=gpus_per_point > 1)


def run_points(cfg: SweepConfig, log_: ResultsLog, scorer: Callable[[Point], list[dict]], executor,
               on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every pending point of `cfg` on `executor`; returns all of the log's records (failures in `log_.failures`)."""
    points = pending_points(cfg, log_.done)

    def done(outcome) -> None:
        if not outcome.ok:
            log.warning("%s failed after %d attempt(s): %s", outcome.item, outcome.attempts, outcome.error)
            log_.fail({"method": outcome.item.method, "level": outcome.item.level.label if outcome.item.level else DENSE,
                       "tasks": list(outcome.item.tasks), "error": outcome.error, "attempts": outcome.attempts})
            return
        for record in outcome.value:
            log_.append(record)
            if on_point:
                on_point(record)

    executor.run(scorer, points, done)
    log_.reorder_(grid_keys(cfg))
    return log_.records


def failure_message(failures: list[dict], path) -> str:
    """One line naming the points that failed (grouped by error) and how to retry just them."""
    by_error: dict[str, list[str]] = {}
    for f in failures:
        by_error.setdefault(f["error"], []).append(DENSE if f["method"] == DENSE else f"{f['method']} {f['level']}")
    shown = "; ".join(f"{', '.join(points)}: {error}" for error, points in by_error.items())
    return (f"{len(failures)} point{'s' if len(failures) > 1 else ''} failed ({shown}); the others are in {path}. "
            "Rerun the same command to retry only the missing points.")
