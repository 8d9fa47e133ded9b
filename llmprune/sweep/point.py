"""One sweep point, (curve, level, task) -> its result record, and the runners that score points.

A `PointRunner` holds one loaded model (maybe offloaded under a memory budget) and the evaluation suite.
`run(point)` gives the model that point's weights, unless it holds them already, and scores the point's
task. The weights always come from the checkpoint on disk, never from a copy in memory: a magnitude level
is written over the live weights by prune's own per-tensor code (global levels with thresholds all found
in one pass, so going up the nested levels costs one read of the prunable weights each), and a calibrated
level (Wanda, SparseGPT) is streamed by the engine from the checkpoint into the scratch folder and copied
in. Either way a point's weights equal `llmprune prune`'s output with the same arguments, byte for byte,
whatever was offloaded, and in any order of points.

A curve is a method with an allocation (`wanda`, or `wanda+owl` for OWL's layer-wise sparsities). The OWL
outlier ratios belong to the dense model, so a runner scores them once per method (at the first OWL level it
prunes) and reuses them for the method's other levels: only the layer sparsities are recomputed.

An executor hands out `Work`s (the points of one (curve, level), pruned once) to a runner's `run_work`:
the `PointRunner` itself in this process, or `remote.LoadAndRun` on a remote worker (Ray), which loads the
model once per worker process and keeps a `PointRunner` of its own there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import PruneConfig
from ..io import Checkpoint
from ..models import Loaded
from .results import DENSE


@dataclass(frozen=True)
class Level:
    """One grid point: an unstructured sparsity, or an N:M pattern (whose sparsity is 1 - N/M)."""

    label: str
    sparsity: float
    pattern: str | None = None


def curve_label(method: str, allocation: str = "uniform") -> str:
    """The curve's name in results and plots: `wanda` for a uniform allocation, `wanda+owl` for OWL."""
    return method if allocation == "uniform" else f"{method}+{allocation}"


@dataclass(frozen=True)
class Point:
    """What to score: `method` with `allocation` at `level` (None with method "dense": the unpruned model)
    on `task`."""

    method: str
    level: Level | None
    task: str
    allocation: str = "uniform"

    @property
    def curve(self) -> str:
        return curve_label(self.method, self.allocation)

    @property
    def weights(self) -> tuple[str, str]:
        """(curve, level label): the key of the weights this point scores (its results' method and level)."""
        return (self.curve, self.level.label if self.level else DENSE)


@dataclass(frozen=True)
class Work:
    """What an executor hands out: the points of one (curve, level), pruned once and scored per task."""

    points: tuple[Point, ...]

    @property
    def curve(self) -> str:
        return self.points[0].weights[0]

    @property
    def level(self) -> str:
        return self.points[0].weights[1]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(p.task for p in self.points)

    def __str__(self) -> str:
        return DENSE if self.level == DENSE else f"{self.curve} {self.level}"


class PointRunner:
    """Scores points of a sweep on one loaded model; see the module docstring."""

    def __init__(self, cfg, loaded: Loaded, suite, progress=None):
        """`cfg`: the SweepConfig; `suite`: the prepared evaluation Suite; `progress`: its progress bars."""
        self.cfg, self.loaded, self.suite, self.progress = cfg, loaded, suite, progress
        self.state = (DENSE, DENSE)   # whose weights the model holds now
        self.actual = 0.0
        self._thresholds = None
        self._calib = None
        self.outliers = {}  # method -> its OWL Allocation at an earlier level: the dense model's outlier ratios

    def prepare(self, points: list[Point]) -> None:
        """Draw what the points share before the first is scored (the calibration batch), so that a bad
        calibration source fails before any result is written."""
        from ..methods import get_method

        for p in points:
            if p.level is not None and get_method(p.method).calibrated:
                self.calibration(self.cfg.prune_config(p.method, p.level, p.allocation))
                return

    def run_work(self, work: Work) -> list[dict]:
        """The records of a work's points, one per task (its prune charged to the first)."""
        return [self.run(p) for p in work.points]

    def run(self, point: Point) -> dict:
        """The result record of `point` (see results.jsonl): metrics, actual sparsity, seconds."""
        t0 = time.perf_counter()
        if point.weights != self.state:
            self.state = None  # until every weight is written: a failed write is never taken for a done one
            self.actual = self._set(point)
            self.state = point.weights
        prune_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = self.suite.run(self.loaded.model, self.loaded.tokenizer, (point.task,), progress=self.progress)[point.task]
        if point.task == "mmlu":  # per-subject categories and the task folder live in the header, not every line
            metrics = {k: v for k, v in metrics.items() if k not in ("task_dir", "data")}
            metrics["subjects"] = {s: {"accuracy": v["accuracy"], "questions": v["questions"]}
                                   for s, v in metrics["subjects"].items()}
        return {"method": point.curve, "level": point.weights[1],
                "sparsity": point.level.sparsity if point.level else 0.0, "actual_sparsity": self.actual,
                "task": point.task, "metrics": metrics, "seconds": {"prune": prune_s, "eval": time.perf_counter() - t1},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def _set(self, point: Point) -> float:
        from ..allocation import Allocation
        from ..methods import get_method
        from ..offload import prune_loaded_, restore_

        lm = self.loaded
        if point.level is None:
            restore_(lm.model, lm.source, self._names(), lm.scratch)
            return 0.0
        pcfg: PruneConfig = self.cfg.prune_config(point.method, point.level, point.allocation)
        threshold = calib = None
        if pcfg.pattern is None and pcfg.scope == "global":
            threshold = self.thresholds().get(pcfg.sparsity)
        if get_method(point.method).calibrated:
            calib = self.calibration(pcfg)
        summary = prune_loaded_(lm.model, lm.source, pcfg, lm.scratch, threshold=threshold, calib=calib,
                                outliers=self.outliers.get(point.method))
        if "allocation" in summary:
            self.outliers[point.method] = Allocation.from_json(summary["allocation"])
        return summary["global"]["sparsity"]

    def calibration(self, pcfg: PruneConfig):
        """The one calibration batch every calibrated level reuses (its source, size and seed are the sweep's,
        the same at every level), drawn once: what `prune` draws for `pcfg`."""
        if self._calib is None:
            from ..streaming import calibration_ids

            self._calib = calibration_ids(self.loaded.source, Checkpoint(self.loaded.source), pcfg)
        return self._calib

    def thresholds(self) -> dict:
        """Every global magnitude level's threshold, from one pass over the checkpoint (found once)."""
        if self._thresholds is None:
            from .levels import global_thresholds

            levels = [lv.sparsity for _, m, a in self.cfg.variants for lv in self.cfg.levels
                      if lv.pattern is None and self.cfg.prune_config(m, lv, a).scope == "global"]
            self._thresholds = (global_thresholds(Checkpoint(self.loaded.source), self._names(), levels)
                                if levels else {})
        return self._thresholds

    def _names(self) -> list[str]:
        from ..prune import prunable_names

        return prunable_names(Checkpoint(self.loaded.source), self.cfg.prune_config("magnitude", self.cfg.levels[0]))[1]
