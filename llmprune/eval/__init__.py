"""Evaluation: one Suite of windowed perplexity, zero-shot MMLU and any lm-eval task on a loaded model."""
from .loading import loading_kwargs
from .lmeval import run_tasks, save_results
from .mmlu import load_questions, summarize
from .ppl import Perplexity, perplexity
from .suite import Suite, SuiteConfig, run_mmlu

__all__ = ["loading_kwargs", "run_tasks", "save_results", "load_questions", "run_mmlu", "summarize",
           "Perplexity", "perplexity", "Suite", "SuiteConfig"]
