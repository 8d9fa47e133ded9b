"""`llmprune finetune`: fine-tune a pruned model with its mask held fixed, or find the mask while training
(ticket methods; `--imp` is `--method lth` given as rounds and a rate)."""
from __future__ import annotations

import click
from rich.table import Table

from ..errors import LlmpruneError
from ..io import check_output
from .common import emit, fmt_pct, json_option, option, stderr
from .compare import make_ticket_config, ticket_options


@click.command("finetune")
@click.argument("model")
@click.option("--task", required=True, help="Task: glue/sst2, glue/rte, glue/mnli, ... cifar10, cifar100 (Hub datasets); "
              "text, image (your --train-data/--eval-data); mmlu-category, digits (offline, no download).")
@click.option("--sparsity", type=float, default=0.0, show_default=True, help="Prune with global OMP to this fraction first.")
@click.option("--mask-from", type=click.Path(), default=None, help="A pruned directory: keep its nonzeros, train only those "
              "[default: no mask from a directory].")
@click.option("--method", default="omp", show_default=True,
              help="How the mask at --sparsity is found: omp (one shot, before training), or found while fine-tuning: "
                   "random, progressive, snip, grasp, earlybird, lth, lth-rewind, lottery-pool, isp.")
@click.option("--imp", is_flag=True, help="Lottery tickets by IMP given as --rounds and --rate: --method lth at sparsity "
              "1 - (1 - rate)^rounds, every round's masks kept as OUTPUT/roundK/.")
@click.option("--rounds", type=int, default=5, show_default=True, help="IMP: number of pruning rounds.")
@click.option("--rate", type=float, default=0.2, show_default=True, help="IMP: fraction of the remaining weights removed per round.")
@option("--train-data", "train_file", old=("--train",), type=click.Path(exists=True), default=None,
        help="Local training data: CSV/JSONL, or an image folder [default: the task's own data].")
@option("--eval-data", "eval_file", old=("--eval",), type=click.Path(exists=True), default=None,
        help="Local evaluation data, same layout as --train-data [default: the task's own data].")
@click.option("--max-train-samples", type=int, default=None, help="Train on a seeded random subset of this size [default: all].")
@click.option("--max-eval-samples", type=int, default=None, help="Evaluate on a seeded random subset of this size [default: all].")
@click.option("--epochs", type=float, default=None, help="Epochs [default: the task's].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: the task's].")
@click.option("--lr", type=float, default=None, help="Peak learning rate, decayed linearly to 0 [default: the task's].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: 0.01].")
@click.option("--max-length", type=int, default=None, help="Tokens per text example [default: the task's].")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps (per run / IMP round) "
              "[default: no cap].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data subsets, the new head and shuffling.")
@ticket_options
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@json_option
def finetune_cmd(model, task, sparsity, mask_from, method, imp, rounds, rate, train_file, eval_file, max_train_samples,
                 max_eval_samples, epochs, batch_size, lr, weight_decay, max_length, max_steps, seed, stages, weak_runs,
                 weak_fraction, vote, score_batches, eb_eps, output, overwrite, as_json):
    """Fine-tune MODEL on a task keeping pruned weights at exactly zero.

    The mask comes from global one-shot magnitude pruning (--sparsity), from a pruned directory
    (--mask-from), or is found by IMP (--imp). The classification head stays dense. MODEL is a Hub id, a local
    directory, or the built-in offline all-minilm-l6-v2 (BERT, from a PyPI package).

    \b
    llmprune finetune bert-base-uncased --task glue/sst2 --sparsity 0.5 -o bert-sst2-omp50
    llmprune finetune ./vit --task cifar10 --mask-from ./vit-omp40 -o vit-c10
    llmprune finetune bert-base-uncased --task glue/rte --imp --rounds 5 --rate 0.2 -o bert-rte-lth
    llmprune finetune all-minilm-l6-v2 --task mmlu-category --sparsity 0.5 --max-train-samples 2000 -o out  # offline
    llmprune finetune bert-base-uncased --task glue/rte --method isp --sparsity 0.6 -o rte-isp60
    """
    from ..finetune import FinetuneConfig, get_task, train_config

    spec = get_task(task)
    tcfg = train_config(spec, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        max_length=max_length, max_steps=max_steps, seed=seed)
    cfg = FinetuneConfig(task=task, sparsity=sparsity, mask_from=mask_from, train_file=train_file, eval_file=eval_file,
                         max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, train=tcfg)
    if imp:
        method, cfg = "lth", _imp_config(cfg, method, rounds, rate)
    if method != "omp":
        from dataclasses import replace

        from ..tickets import get_method

        get_method(method)
        opts = replace(make_ticket_config(stages, weak_runs, weak_fraction, vote, rounds, score_batches, eb_eps),
                       keep_rounds=imp)
    check_output(output, overwrite)
    log = lambda s: stderr.print(s, highlight=False)  # noqa: E731
    if method != "omp":
        from ..tickets.run import finetune_ticket

        record = finetune_ticket(model, output, cfg, method, opts, overwrite=overwrite, log=log)
        rounds_run = record["info"].get("rounds") if imp else None
        rows = ([(f"round {r['round']}", r["sparsity"], r["score"]) for r in rounds_run] if rounds_run
                else [(method, record["sparsity"], record["score"])])
    else:
        from ..finetune import finetune

        record = finetune(model, output, cfg, overwrite=overwrite, log=log)
        rows = [(f"epoch {h['epoch']}", record["sparsity"], h["score"]) for h in record["history"]]
    record["output"] = str(output)
    table = Table(title=f"{model} on {spec.name} -> {output}")
    for col in ("run", "sparsity", spec.metric):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, s, score in rows:
        table.add_row(name, fmt_pct(s), f"{score:.4f}")
    emit(record, as_json, table)


def _imp_config(cfg, method: str, rounds: int, rate: float):
    """`--imp --rounds R --rate r` as the lth ticket method's config: target sparsity 1 - (1 - r)^R."""
    from dataclasses import replace

    from ..tickets.scores import imp_sparsity

    if method != "omp":
        raise LlmpruneError(f"--imp and --method {method} both choose the mask: --method lth is IMP with rewinding.")
    if not (0 < rate < 1):
        raise LlmpruneError(f"--rate {rate:g} is out of range: use the fraction of remaining weights removed per round, in (0, 1).")
    if rounds < 1:
        raise LlmpruneError(f"--rounds {rounds} must be at least 1.")
    if cfg.sparsity or cfg.mask_from:
        raise LlmpruneError("--imp finds its own masks: drop --sparsity / --mask-from.")
    return replace(cfg, sparsity=imp_sparsity(rate, rounds))
