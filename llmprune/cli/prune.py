"""`llmprune prune`: one-shot pruning of a checkpoint into a new directory."""
from __future__ import annotations

import click
from rich.table import Table

from ..config import FORMATS, check_choice
from ..errors import LlmpruneError
from ..io import Checkpoint, check_output
from ..methods import get_method
from ..models import resolve_model
from .common import emit, fmt_pct, json_option, make_config, progress, prune_options


@click.command("prune")
@click.argument("model")
@prune_options
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (written atomically).")
@click.option("--format", "fmt", default="dense", show_default=True, help="dense: zeros kept in place (loads anywhere); sparse: compact bitmask safetensors.")
@click.option("--calib", default=None, help="Calibration text for wanda/sparsegpt: pydoc (offline default: Python's own docs), "
              "c4, wikitext2 (Hub), or a .txt/.jsonl file.")
@click.option("--calib-samples", type=int, default=None, help="Calibration sequences [default: 128].")
@click.option("--seqlen", type=int, default=None, help="Tokens per calibration sequence [default: 2048, capped at the model's context].")
@click.option("--seed", type=int, default=None, help="Seed for calibration sampling [default: 0].")
@click.option("--device", default=None, help="Where the layer being pruned runs (calibration methods): cpu, cuda, auto "
              "[default: auto, CUDA when available].")
@click.option("--activations", type=click.Choice(["auto", "memory", "disk"]), default="auto", show_default=True,
              help="Where calibration activations live (calibration methods): memory, a memory-mapped file in "
                   "OUTPUT.partial (disk), or memory when they take under half of the free memory (auto).")
@click.option("--sequential/--no-sequential", default=None, help="Calibration methods: within a layer, prune each "
              "group of linears (q/k/v, o, gate/up, down) on the inputs the pruned ones before it give, computing "
              "every linear once (about half the reference drivers' work; GPTQ's true-sequential order), or take "
              "every statistic from the unpruned layer and rerun it (--no-sequential: the Wanda and SparseGPT "
              "papers' order, less memory) [default: sequential].")
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads for magnitude pruning "
              "(memory-bound; file reads already overlap on a background thread). 0: torch's default.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@json_option
def prune_cmd(model, method, sparsity, pattern, scope, include, exclude, allocation, owl_m, owl_lambda, output, fmt,
              calib, calib_samples, seqlen, seed, device, activations, sequential, threads, overwrite, as_json):
    """Prune MODEL in one shot and save it to OUTPUT.

    MODEL is a Hugging Face repo id, a local directory (safetensors or .bin), a .gguf file, or a built-in
    offline model: smollm2-135m, gemma3-270m.

    \b
    llmprune prune smollm2-135m --sparsity 0.4 -o omp40            # global OMP (the paper's method)
    llmprune prune ./my-model --sparsity 0.5 --scope layer -o out  # same fraction in every matrix
    llmprune prune smollm2-135m --pattern 2:4 -o out24             # N:M
    llmprune prune smollm2-135m --method wanda --sparsity 0.7 --allocation owl -o owl70   # OWL layer sparsities
    """
    cfg = make_config(method, sparsity, pattern, scope, include, exclude, calib=calib, calib_samples=calib_samples,
                      seqlen=seqlen, seed=seed,
                      extra={**({"device": device} if device else {}), **({"activations": activations}
                                                                          if activations != "auto" else {})},
                      allocation=allocation.lower(), owl_m=owl_m, owl_lambda=owl_lambda, sequential=sequential)
    unused = [f for f, v in (("--calib", calib), ("--calib-samples", calib_samples), ("--seqlen", seqlen),
                             ("--seed", seed), ("--device", device)) if v is not None]
    unused += [] if sequential is None else ["--sequential" if sequential else "--no-sequential"]
    unused += ["--activations"] if activations != "auto" else []
    if not get_method(cfg.method).calibrated and unused:
        raise LlmpruneError(f"{', '.join(unused)}: only for --method wanda or sparsegpt (magnitude pruning uses no data).")
    if threads < 0:
        raise LlmpruneError(f"Invalid --threads {threads}: use a positive count, or 0 for torch's default.")
    check_choice("format", fmt, FORMATS)
    check_output(output, overwrite)
    from ..prune import prune_checkpoint

    n = len(Checkpoint(resolve_model(model)).names)
    with progress(n, f"{cfg.describe()}") as step:
        record = prune_checkpoint(model, output, cfg, overwrite=overwrite, fmt=fmt, step=step, threads=threads or None)
    record["output"] = str(output)
    if as_json:
        emit(record, True)
        return
    s = record["sparsity"]
    table = Table(title=f"{model} -> {output}  ({cfg.describe()}, {record['timings']['total']:.1f}s)")
    for col in ("module type", "params", "zeros", "sparsity"):
        table.add_column(col, justify="left" if col == "module type" else "right")
    for kind, row in s["by_type"].items():
        table.add_row(kind, f"{row['params']:,}", f"{row['zeros']:,}", fmt_pct(row["sparsity"]))
    g = s["global"]
    table.add_row("[bold]all prunable", f"{g['params']:,}", f"{g['zeros']:,}", f"[bold]{fmt_pct(g['sparsity'])}")
    emit(record, False, table)
    layers = record["allocation"].get("layers")
    if layers:
        s_of = [row["sparsity"] for row in layers.values()]
        click.echo(f"OWL layer sparsities {fmt_pct(min(s_of))} .. {fmt_pct(max(s_of))} over {len(s_of)} layers "
                   f"(see run.json, or inspect --by layer).", err=True)
    if g.get("zeros_before"):
        click.echo(f"{g['zeros_before']:,} weights were already zero and count as pruned.", err=True)
