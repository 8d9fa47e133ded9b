"""Readable output: the chatter of transformers, accelerate, datasets and lm-eval only with `-v`.

An MMLU run prints ~170 lines of other libraries' logging and progress bars (a "Generating test split" bar
per subject, a warning and a bar per lm-eval task, `fatal: not a git repository` from lm-eval asking git
for a commit hash outside a checkout: `lmeval.run_tasks` always silences that one). `quiet()` turns their loggers to errors only, their progress bars
off, and swallows whatever they still write to Python's stderr (tqdm bars without a switch), restoring all
of it afterwards; if the block fails with an unexpected error, what was swallowed is written out, so it keeps its context.
llmprune's own progress bar writes to the stream `quiet()` yields, the real stderr.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings

from ..errors import LlmpruneError

LOGGERS = ("lm_eval", "lm-eval", "accelerate", "datasets", "transformers", "huggingface_hub", "urllib3", "filelock")


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Yield the real stderr; inside, other libraries are silent unless `verbose` (see module docstring)."""
    real = sys.stderr
    if verbose:
        yield real
        return
    with contextlib.ExitStack() as stack:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        stack.enter_context(_library_switches())
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        swallowed = io.StringIO()
        stack.enter_context(contextlib.redirect_stderr(swallowed))
        try:
            yield real
        except LlmpruneError:  # a one-line user error says it all
            raise
        except Exception:
            real.write(swallowed.getvalue()[-4000:])
            raise


@contextlib.contextmanager
def _library_switches():
    """transformers' and datasets' own verbosity and progress-bar switches, restored afterwards."""
    undo = []
    try:
        from transformers.utils import logging as tlog

        level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        undo.append(lambda: (tlog.set_verbosity(level), tlog.enable_progress_bar() if bars else None))
    except ImportError:
        pass
    try:
        import datasets

        level, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        undo.append(lambda: (datasets.logging.set_verbosity(level), datasets.enable_progress_bars() if bars else None))
    except ImportError:
        pass
    try:
        yield
    finally:
        for fn in undo:
            fn()
