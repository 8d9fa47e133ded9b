"""A sweep's runner on a remote worker (`sweep --executor ray`): the worker loads the model itself.

`LoadAndRun` is what the driver hands to the executor in place of a `PointRunner`: picklable, it loads the
model in the worker process as `llmprune sweep` does (under `--max-memory`, offloading into a scratch
folder of its own), once per process, and keeps a `PointRunner` there for the next work that process gets,
so levels landing in the same worker share the load, the one-pass magnitude thresholds and the OWL outlier
ratios. A worker holds one copy of the model, like the local sweep: each level's weights are written over
it from the checkpoint.
"""
from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import Checkpoint
from .point import Point, PointRunner, Work
from .run import SweepConfig, suite_config


_LOADED: dict = {}  # this worker process's (PointRunner, scratch folder), by what it was loaded for (one at a time)


@dataclass(frozen=True)
class LoadAndRun:
    """A runner for remote workers (see the module docstring); `offload_folder` holds its scratch folder.

    `cfg` names the model and data by paths every node can see (see `for_workers`), or Hub ids / built-in
    names each node resolves through its own cache. `spread` places a model over all the GPUs Ray gave the
    work."""

    cfg: SweepConfig
    device: str = "cpu"
    threads: int | None = None
    spread: bool = False
    max_memory: dict | None = None
    offload_folder: str | None = None

    def prepare(self, points: list[Point]) -> None:
        """On the driver: draw the calibration batch once, as the workers will, so that a bad calibration
        source fails before any work is handed out (the model itself is not loaded here)."""
        from ..streaming import calibration_ids
        from ..methods import get_method

        for p in points:
            if p.level is not None and get_method(p.method).calibrated:
                from ..models import resolve_model

                source = resolve_model(self.cfg.model)
                calibration_ids(source, Checkpoint(source), self.cfg.prune_config(p.method, p.level, p.allocation))
                return

    def run_work(self, work: Work) -> list[dict]:
        t0 = time.perf_counter()
        key = (repr(self), _fingerprint(self.cfg.model))
        loaded = key in _LOADED
        if not loaded:
            _release()  # a new sweep in this process: drop the last model first
            _LOADED[key] = self._load()
        load_s = 0.0 if loaded else time.perf_counter() - t0
        records = _LOADED[key][0].run_work(work)
        for r in records:
            r["seconds"]["load"] = load_s
            load_s = 0.0
        return records

    def _load(self) -> tuple[PointRunner, Path]:
        import torch

        from ..errors import LlmpruneError
        from ..eval.suite import Suite
        from ..models import load
        if self.threads:
            torch.set_num_threads(self.threads)
        cfg = self.cfg
        parent = Path(self.offload_folder) if self.offload_folder else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="llmprune-offload-", dir=parent))
        try:
            kwargs = {"device_map": "auto"} if self.spread and self.max_memory is None else {}
            loaded = load(cfg.model, dtype=cfg.dtype, device=self.device, max_memory=self.max_memory, scratch=scratch,
                          **kwargs)
            if loaded.tokenizer is None:
                raise LlmpruneError(f"{cfg.model} has no tokenizer: a sweep scores a language model with one.")
            return PointRunner(cfg, loaded, Suite(suite_config(cfg))), scratch
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise


@atexit.register
def _release() -> None:
    for _, scratch in _LOADED.values():
        shutil.rmtree(scratch, ignore_errors=True)
    _LOADED.clear()


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
