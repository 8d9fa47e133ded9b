"""`compare-methods`: every ticket method x sparsity x seed on one model and task, as a table and a plot.

Writes OUT/results.json (every run and the summary), OUT/results.csv (one row per method x sparsity:
mean and std of the score over seeds, training steps), OUT/plot.png and OUT/masks/<method>-s<pct>-seed<k>/
(each run's keep-mask, readable by `llmprune masks compare`).

Cost columns: `train_steps` are the optimizer steps a method ran (all of IMP's rounds, ISP's weak runs,
EarlyBird's search); `score_batches` the one-batch backward passes spent scoring before training (SNIP: the
gradient; GraSP: the gradient plus a Hessian-gradient product, counted as two).
"""
from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..finetune.run import FinetuneConfig
from ..finetune.tasks import get_task, load_task
from .base import Log, TicketConfig
from .run import run_method, save_masks


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (method, sparsity) in first-seen order: mean/std of score and steps over seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["target_sparsity"]), []).append(r)
    rows = []
    for (method, s), rs in groups.items():
        scores = [r["score"] for r in rs]
        steps = [r["train_steps"] for r in rs]
        rows.append({"method": method, "sparsity": s, "seeds": len(rs), "score_mean": statistics.fmean(scores),
                     "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "train_steps": statistics.fmean(steps), "score_batches": statistics.fmean(r["score_batches"] for r in rs),
                     "budget_steps": rs[0]["budget_steps"], "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return rows


def compare_methods(model: str, out: str | Path, cfg: FinetuneConfig, methods: list[str], sparsities: list[float],
                    seeds: int = 1, opts: TicketConfig | None = None, *, overwrite: bool = False,
                    log: Log | None = None, threads: int | None = None) -> dict:
    """Run the grid and write OUT (atomically); returns {"rows": summary, "runs": every run, ...}.

    `threads`: intra-op threads while training (None: torch's default). On a shared, busy machine 1 is
    much faster (a 2-thread op waits for both cores; the test suite ran 4x faster with one thread here).
    """
    from ..prune import torch_threads

    with torch_threads(threads):
        return _compare(model, out, cfg, methods, sparsities, seeds, opts, overwrite, log)


def _compare(model, out, cfg, methods, sparsities, seeds, opts, overwrite, log) -> dict:
    from ..io import atomic_dir, check_not_input, check_output
    from ..record import versions
    from . import get_method

    for m in methods:
        get_method(m)
    opts = opts or TicketConfig()
    out = check_output(out, overwrite)
    if Path(model).exists():  # (a Hub id or built-in name cannot be the output folder)
        check_not_input(out, model)
    spec = get_task(cfg.task)
    data = load_task(spec, cfg.train_file, cfg.eval_file, cfg.max_train_samples, cfg.max_eval_samples, cfg.train.seed)
    t0 = time.perf_counter()
    runs = []
    with atomic_dir(out, overwrite) as work:
        for s in sparsities:
            for method in methods:
                for k in range(seeds):
                    seed = cfg.train.seed + k
                    ticket, tr, rec = run_method(model, data, replace(cfg, sparsity=s), method, opts, seed=seed)
                    name = f"{method}-s{round(100 * s)}-seed{seed}"
                    save_masks(ticket.masks, tr.net.config, work / "masks" / name, rec)
                    rec["mask_dir"] = f"masks/{name}"
                    runs.append(rec)
                    if log:
                        log(f"{method} @ {s:.0%} seed {seed}: {spec.metric} {rec['score']:.4f}  "
                            f"{rec['train_steps']} steps (+{rec['score_batches']} scoring batches)  {rec['seconds']:.0f}s")
        rows = summarize(runs)
        result = {"model": str(model), "task": spec.name, "metric": spec.metric, "config": cfg.to_json(),
                  "ticket": opts.to_json(), "methods": methods, "sparsities": sparsities, "seeds": seeds,
                  "rows": rows, "runs": runs, "timings": {"total": time.perf_counter() - t0}, "versions": versions()}
        (work / "results.json").write_text(json.dumps(result, indent=2, default=str))
        write_csv(rows, work / "results.csv")
        plot_methods(rows, work / "plot.png", f"{model} on {spec.name}", spec.metric)
    return result


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_methods(rows: list[dict], path: Path, title: str, metric: str) -> Path:
    """Left: score against sparsity per method (error bars: std over seeds). Right: score against the
    training steps spent, one marker per method and sparsity."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^vD<>pP*X"
    for i, m in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["sparsity"])
        c, mk = colors[i % len(colors)], markers[i % len(markers)]
        a.errorbar([100 * r["sparsity"] for r in rs], [r["score_mean"] for r in rs], yerr=[r["score_std"] for r in rs],
                   marker=mk, color=c, capsize=3, label=m)
        b.scatter([r["train_steps"] for r in rs], [r["score_mean"] for r in rs], marker=mk, color=c, label=m)
    a.set_xlabel("sparsity of prunable weights (%)")
    b.set_xlabel("training steps used")
    for ax in (a, b):
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    a.legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
