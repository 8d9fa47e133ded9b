"""The bridge to lm-evaluation-harness: any of its tasks on a model that is already loaded (and maybe pruned).

`HFLM(pretrained=model, tokenizer=tokenizer)` wraps the in-memory model, so what is scored is exactly what
llmprune holds, with lm-eval's own prompts, requests and metrics. Local task folders (the offline MMLU
task) are read with `include_defaults=False`: building lm-eval's full index costs ~11 s, a folder ~0 s.
"""
from __future__ import annotations

import json
import logging
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


def wrap_model(model, tokenizer, batch_size: int | str = 8, max_batch_size: int = 64):
    """lm-eval's HFLM around an in-memory model; the tokenizer is passed so lm-eval never loads its own."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_size=max_batch_size)


def run_tasks(model, tokenizer, tasks: list[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
              batch_size: int | str = 8, include_path: str | Path | None = None, include_defaults: bool | None = None,
              output: str | Path | None = None, manager=None) -> dict:
    """lm-eval's `simple_evaluate` on the loaded model; returns its results dict (saved as JSON to `output`).

    `manager` is a TaskManager already built (and checked) by the caller; else one is built from
    `include_path` / `include_defaults` (see `task_manager`)."""
    from lm_eval import simple_evaluate

    manager = manager or task_manager(include_path, include_defaults)
    check_tasks(tasks, manager)
    _quiet_lm_eval()
    results = simple_evaluate(model=wrap_model(model, tokenizer, batch_size), tasks=tasks, task_manager=manager,
                              limit=limit, num_fewshot=num_fewshot, log_samples=False)  # lm-eval's default seeds
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
