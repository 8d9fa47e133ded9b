"""The bridge to lm-evaluation-harness: any of its tasks on a model that is already loaded (and maybe pruned).

`HFLM(pretrained=model, tokenizer=tokenizer)` wraps the in-memory model, so what is scored is exactly what
llmprune holds, with lm-eval's own prompts, requests and metrics. Local task folders (the offline MMLU
task) are read with `include_defaults=False`: building lm-eval's full index costs ~11 s, a folder ~0 s.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from pathlib import Path

from ..errors import LlmpruneError, did_you_mean


def task_manager(include_path: str | Path | None = None, include_defaults: bool | None = None):
    """lm-eval's TaskManager: the folder's tasks (overriding built-ins of the same name), plus the built-in
    tasks unless `include_defaults` is False; by default built-ins only when no folder is given."""
    from lm_eval.tasks import TaskManager

    if include_defaults is None:
        include_defaults = include_path is None
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)


def check_tasks(names: list[str], manager) -> list[str]:
    """`names` unchanged if lm-eval knows them all, else a one-line error suggesting close names."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            raise LlmpruneError(f"Unknown task '{name}'.{did_you_mean(name, sorted(known))} "
                                "Use mmlu, ppl, or lm-eval task names (`lm-eval ls tasks` lists them).")
    return names


def wrap_model(model, tokenizer, batch_size: int | str = 8, max_batch_size: int = 64, progress=None):
    """lm-eval's HFLM around an in-memory model; the tokenizer is passed so lm-eval never loads its own.

    Inputs go to the model's input device (a dispatched, offloaded model's execution device: HFLM would take
    its first parameter's, which is `meta` when that one is offloaded). `progress(total, description)`, a
    context manager yielding `step()`, replaces lm-eval's progress bars by one bar over all requests."""
    from lm_eval.models.huggingface import HFLM

    from ..offload import input_device

    class _HFLM(HFLM):
        def _requests(self, kind, requests, **kwargs):
            if progress is None:
                return getattr(super(), kind)(requests, **kwargs)
            with progress(len(requests), "MMLU" if kind == "loglikelihood" else kind) as step:
                self.set_cache_hook(_Progress(step))  # lm-eval calls it once per answered request
                try:
                    return getattr(super(), kind)(requests, disable_tqdm=True)
                finally:
                    self.set_cache_hook(_Progress(None))

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._requests("loglikelihood", requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._requests("loglikelihood_rolling", requests, disable_tqdm=disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._requests("generate_until", requests, disable_tqdm=disable_tqdm)

    lm = _HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=max_batch_size)
    lm._device = input_device(model)
    return lm


class _Progress:
    """lm-eval's CacheHook interface (`add_partial` per answered request), advancing a progress bar."""

    def __init__(self, step):
        self.step = step

    def add_partial(self, attr, req, res) -> None:
        if self.step is not None:
            self.step()


def run_tasks(model, tokenizer, tasks: list[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
              batch_size: int | str = 8, include_path: str | Path | None = None, include_defaults: bool | None = None,
              output: str | Path | None = None, manager=None, progress=None) -> dict:
    """lm-eval's `simple_evaluate` on the loaded model; returns its results dict (saved as JSON to `output`).

    `manager` is a TaskManager already built (and checked) by the caller; else one is built from
    `include_path` / `include_defaults` (see `task_manager`). `progress`: see `wrap_model`."""
    from lm_eval import simple_evaluate

    manager = manager or task_manager(include_path, include_defaults)
    check_tasks(tasks, manager)
    _quiet_lm_eval()
    with _git_without_stderr():
        results = simple_evaluate(model=wrap_model(model, tokenizer, batch_size, progress=progress), tasks=tasks,
                                  task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False)  # lm-eval's default seeds
    if results is None:
        raise LlmpruneError("lm-eval returned no results (a non-zero rank in a distributed run?).")
    if output is not None:
        save_results(results, output)
    return results


def save_results(results: dict, path: str | Path) -> Path:
    """lm-eval's results dict as JSON, written atomically; non-JSON values the way lm-eval writes them."""
    from lm_eval.utils import handle_non_serializable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    partial.replace(path)
    return path


def _quiet_lm_eval() -> None:
    # HFLM warns that a pre-loaded model ignores its loading arguments: we know, it is the point.
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)


@contextlib.contextmanager
def _git_without_stderr():
    """lm-eval asks `git describe` for a commit hash with git's stderr on ours, which prints `fatal: not a
    git repository` outside a checkout: ask the same with git's stderr discarded."""
    import lm_eval.evaluator as evaluator
    import lm_eval.loggers.utils as logger_utils

    def git_hash():
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return logger_utils.get_commit_from_path(os.getcwd())

    patched = [(m, m.get_git_commit_hash) for m in (evaluator, logger_utils) if hasattr(m, "get_git_commit_hash")]
    for module, _ in patched:
        module.get_git_commit_hash = git_hash
    try:
        yield
    finally:
        for module, original in patched:
            module.get_git_commit_hash = original
