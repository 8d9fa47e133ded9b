"""Benchmark: a magnitude sweep of k levels costs about k evaluations (nested masks, no reload per level).

Loads SmolLM2-135M once and times, in one run,
  (a) k + 1 perplexity evaluations of the dense model (the floor: what the evaluations alone cost), and
  (b) `run_sweep` over the dense model + k global-magnitude levels with the same evaluation,
and prints the ratio b / a (target: <= 1.1) with the sweep's overhead broken down: every level's threshold
from one histogram pass over the checkpoint (once), and per level one streamed read of the prunable
weights from disk, masked and written over the live ones (no copy of the model is held). The evaluation is
perplexity on the first windows of the pydoc text.

    .venv/bin/python examples/bench_sweep.py                     # k = 5 levels, seqlen 512, 4 windows
    .venv/bin/python examples/bench_sweep.py --levels 0:0.9:0.1 --windows 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from llmprune.config import parse_sparsities
from llmprune.eval.suite import Suite
from llmprune.sweep.point import PointRunner
from llmprune.sweep.results import ResultsLog
from llmprune.sweep.run import SweepConfig, run_sweep, suite_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--levels", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from llmprune.models import load

    levels = parse_sparsities(args.levels)
    cfg = SweepConfig(model=args.model, tasks=("ppl",), sparsities=levels, seqlen=args.seqlen, ppl_windows=args.windows)
    t0 = time.perf_counter()
    loaded = load(args.model)
    load_s = time.perf_counter() - t0
    suite = Suite(suite_config(cfg))
    model, tok = loaded.model, loaded.tokenizer
    evaluate = lambda m: suite.run(m, tok)  # noqa: E731
    n_evals = 1 + len(cfg.levels)  # the dense point plus k levels

    evaluate(model)  # warm-up (tokenisation caches, allocator)
    t0 = time.perf_counter()
    for _ in range(n_evals):
        evaluate(model)
    evals_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records = run_sweep(PointRunner(cfg, loaded, suite), cfg, ResultsLog(tmp, cfg.identity()))
        sweep_s = time.perf_counter() - t0
    prune_s = [r["seconds"]["prune"] for r in records if r["method"] != "dense"]
    eval_in_sweep = sum(r["seconds"]["eval"] for r in records)
    out = {
        "model": args.model, "levels": len(cfg.levels), "evaluations": n_evals, "seqlen": args.seqlen,
        "windows": args.windows, "threads": args.threads, "load_s": round(load_s, 2),
        "evaluations_alone_s": round(evals_s, 2), "sweep_s": round(sweep_s, 2),
        "ratio": round(sweep_s / evals_s, 3),
        "sweep_eval_s": round(eval_in_sweep, 2),
        "sweep_overhead_s": round(sweep_s - eval_in_sweep, 2),
        "first_level_prune_s (incl. all thresholds)": round(prune_s[0], 2),
        "other_levels_prune_s_mean": round(sum(prune_s[1:]) / max(1, len(prune_s) - 1), 3),
        "ppl": {r["level"]: round(r["metrics"]["ppl"], 2) for r in records},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
