"""`llmprune compare-methods`: ticket methods x sparsities x seeds on one model and task, with their cost;
and `ticket_options`, the method flags shared with `finetune --method`."""
from __future__ import annotations

import click
from rich.table import Table

from ..errors import LlmpruneError
from ..io import check_output
from .common import emit, json_option, option, split_list, stderr


def _methods() -> list[str]:
    from ..tickets import METHODS

    return list(METHODS)


def ticket_options(f):
    """Method options (ISP's soup, SNIP/GraSP batches, EarlyBird's rule), shared with `finetune --method`
    (which has its own --rounds for IMP)."""
    opts = [
        click.option("--stages", type=int, default=3, show_default=True, help="progressive, isp: pruning stages."),
        click.option("--weak-runs", type=int, default=3, show_default=True, help="isp: weak masks per stage."),
        click.option("--weak-fraction", type=float, default=0.1, show_default=True, help="isp: length of one weak run (fraction of an epoch)."),
        click.option("--vote", type=click.Choice(["any", "majority", "all"]), default="majority", show_default=True,
                     help="isp: prune a weight when any / a majority / all weak runs prune it."),
        click.option("--score-batches", type=int, default=4, show_default=True, help="snip, grasp: batches scored before training."),
        click.option("--eb-eps", type=float, default=0.1, show_default=True, help="earlybird: stop when consecutive masks differ by less."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_ticket_config(stages, weak_runs, weak_fraction, vote, rounds, score_batches, eb_eps):
    from ..tickets import TicketConfig

    return TicketConfig(stages=stages, weak_runs=weak_runs, weak_fraction=weak_fraction, vote=vote, rounds=rounds,
                        score_batches=score_batches, eb_eps=eb_eps)


@click.command("compare-methods")
@click.argument("model")
@click.option("--task", required=True, help="Task, as for finetune: glue/rte, ... (Hub datasets); text, image (your "
              "--train-data/--eval-data); mmlu-category, digits (offline, no download).")
@option("--method", "methods", old=("--methods",), multiple=True, help="Ticket method, repeatable or comma-separated "
        f"[default: all: {','.join(_methods())}].")
@option("--sparsities", "sparsities", old=("--sparsity",), default="0.5", show_default=True,
        help="Comma-separated target sparsities, e.g. 0.5,0.6.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Runs per cell (seeds seed, seed+1, ...): mean ± std.")
@option("--train-data", "train_file", old=("--train",), type=click.Path(exists=True), default=None,
        help="Local training data: CSV/JSONL, or an image folder [default: the task's own data].")
@option("--eval-data", "eval_file", old=("--eval",), type=click.Path(exists=True), default=None,
        help="Local evaluation data, same layout as --train-data [default: the task's own data].")
@click.option("--max-train-samples", type=int, default=None, help="Train on a seeded random subset of this size [default: all].")
@click.option("--max-eval-samples", type=int, default=None, help="Evaluate on a seeded random subset of this size [default: all].")
@click.option("--epochs", type=float, default=None, help="Epochs of the main budget [default: the task's].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: the task's].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: the task's].")
@click.option("--max-length", type=int, default=None, help="Tokens per text example [default: the task's].")
@click.option("--max-steps", type=int, default=None, help="Cap the main budget at this many optimizer steps [default: no cap].")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed (data subsets, the new head, shuffling).")
@click.option("--threads", type=int, default=None, help="Intra-op threads while training [default: torch's]; 1 is fastest on a busy shared machine.")
@click.option("--rounds", type=int, default=2, show_default=True, help="lth, lth-rewind, lottery-pool: IMP rounds.")
@ticket_options
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@json_option
def compare_cmd(model, task, methods, sparsities, seeds, train_file, eval_file, max_train_samples, max_eval_samples,
                epochs, batch_size, lr, max_length, max_steps, seed, threads, rounds, stages, weak_runs, weak_fraction, vote,
                score_batches, eb_eps, output, overwrite, as_json):
    """Compare ticket methods while fine-tuning MODEL on a task: score and training cost per method x sparsity.

    Every method shares one training loop and budget (the task's epochs, or --max-steps); its cost is the
    training steps it actually ran (IMP retrains per round, ISP adds its weak runs) plus the batches it
    scored before training (SNIP, GraSP). OUTPUT gets results.csv/json, plot.png and masks/<run>/ for
    `llmprune masks compare`. MODEL is a Hub id, a local directory, or the built-in offline all-minilm-l6-v2.

    \b
    llmprune compare-methods all-minilm-l6-v2 --task mmlu-category --sparsities 0.5 --max-train-samples 400 -o table
    llmprune compare-methods bert-base-uncased --task glue/rte --method omp,lth,isp --sparsities 0.5,0.6 --seeds 3 -o t
    """
    from ..config import parse_sparsities
    from ..finetune import FinetuneConfig, get_task, train_config
    from ..tickets import get_method
    from ..tickets.compare import compare_methods

    names = list(split_list(methods)) or _methods()
    for m in names:
        get_method(m)
    targets = list(parse_sparsities(sparsities, "--sparsity", allow_zero=False))
    if seeds < 1:
        raise LlmpruneError(f"--seeds {seeds} must be at least 1.")
    opts = make_ticket_config(stages, weak_runs, weak_fraction, vote, rounds, score_batches, eb_eps)
    spec = get_task(task)
    tcfg = train_config(spec, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, max_steps=max_steps, seed=seed)
    cfg = FinetuneConfig(task=task, train_file=train_file, eval_file=eval_file, max_train_samples=max_train_samples,
                         max_eval_samples=max_eval_samples, train=tcfg)
    check_output(output, overwrite)
    log = lambda s: stderr.print(s, highlight=False)  # noqa: E731
    result = compare_methods(model, output, cfg, names, targets, seeds, opts, overwrite=overwrite, log=log,
                             threads=threads)
    result["output"] = str(output)
    table = Table(title=f"{model} on {spec.name} -> {output}")
    for col in ("method", "sparsity", f"{spec.metric} (mean ± std)", "train steps", "scoring passes"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        table.add_row(r["method"], f"{r['sparsity']:.0%}", f"{r['score_mean']:.4f} ± {r['score_std']:.4f}",
                      f"{r['train_steps']:.0f}", f"{r['score_batches']:.0f}")
    emit(result, as_json, table)
