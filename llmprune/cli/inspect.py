"""`llmprune inspect`: where the zeros are, per layer and per module type (streams, like prune)."""
from __future__ import annotations

import click
from rich.table import Table

from ..config import parse_pattern
from ..io import Checkpoint
from ..models import resolve_model
from .common import emit, fmt_pct, json_option, progress


@click.command("inspect")
@click.argument("model")
@click.option("--eps", type=float, default=0.0, help="Also count near-zero weights, |w| <= EPS.")
@click.option("--pattern", default=None, help="Check every matrix against an N:M pattern, e.g. 2:4.")
@click.option("--include", multiple=True, help="Regex on tensor names: inspect only these.")
@click.option("--exclude", multiple=True, help="Regex on tensor names: skip these.")
@click.option("--by", type=click.Choice(["type", "layer", "tensor"]), default="type", show_default=True, help="Rows of the table.")
@json_option
def inspect_cmd(model, eps, pattern, include, exclude, by, as_json):
    """Report parameters, zeros, sparsity (and near-zeros, N:M) of MODEL's prunable weights.

    \b
    llmprune inspect out                       # per module type: q/k/v/o vs MLP up/gate/down
    llmprune inspect out --by layer --eps 1e-3
    llmprune inspect out --pattern 2:4 --json
    llmprune inspect owl70 --by layer          # an OWL run: each layer's target beside its sparsity
    """
    nm = parse_pattern(pattern)
    from ..report import inspect_checkpoint

    n = len(Checkpoint(resolve_model(model)).names)
    with progress(n, "inspect") as step:
        summary = inspect_checkpoint(model, eps, nm, include, exclude, step=step)
    if as_json:
        emit(summary, True)
        return
    rows = {"type": summary["by_type"], "layer": summary["by_layer"], "tensor": summary["tensors"]}[by]
    from ..provenance import describe

    table = Table(title=f"{model}: prunable weights", caption=f"weights: {describe(summary['provenance'])}")
    targets = by == "layer" and "allocation" in summary
    cols = ([by, "params", "zeros", "sparsity"] + (["target"] if targets else []) + ([f"|w|<={eps:g}"] if eps else [])
            + (["N:M ok"] if nm and by == "tensor" else []))
    for col in cols:
        table.add_column(col, justify="left" if col == by else "right")
    for key, row in rows.items():
        cells = [key, f"{row['params']:,}", f"{row['zeros']:,}", fmt_pct(row["sparsity"])]
        if targets:
            cells.append(fmt_pct(row["target"]) if "target" in row else "")
        if eps:
            cells.append(fmt_pct(row.get("near_zero", 0) / row["params"]))
        if nm and by == "tensor":
            cells.append("yes" if row["nm_ok"] else "[red]no")
        table.add_row(*cells)
    g = summary["global"]
    total = ["[bold]total", f"{g['params']:,}", f"{g['zeros']:,}", f"[bold]{fmt_pct(g['sparsity'])}"]
    if targets:
        total.append(fmt_pct(summary["allocation"]["target"]))
    if eps:
        total.append(fmt_pct(g.get("near_zero", 0) / g["params"]))
    if nm and by == "tensor":
        total.append("")
    table.add_row(*total)
    emit(summary, False, table)
    if nm:
        verdict = "every matrix satisfies" if summary["pattern"]["satisfied"] else f"{len(summary['pattern']['violating'])} matrices violate"
        click.echo(f"{nm}: {verdict} the pattern.", err=True)
