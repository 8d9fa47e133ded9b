"""`llmprune masks compare`: how alike the keep-masks of two pruned checkpoints are."""
from __future__ import annotations

import click
from rich.table import Table

from .common import emit, fmt_pct, json_option


@click.group("masks")
def masks_cmd() -> None:
    """Work with the keep-masks (nonzeros) of pruned checkpoints."""


@masks_cmd.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--by", type=click.Choice(["layer", "type"]), default="layer", show_default=True,
              help="Rows of the table: one per layer, or one per module type.")
@json_option
def compare_cmd(a, b, by, as_json):
    """Cosine similarity and IoU of the keep-masks of pruned checkpoints A and B.

    A and B are directories of the same architecture (a `prune` output, a `finetune` output or an IMP
    `roundK/`); the mask is each one's nonzeros over the prunable weights.

    \b
    llmprune masks compare bert-rte-lth/round5 bert-omp40
    llmprune masks compare omp40 wanda40 --by type --json
    """
    from ..maskcmp import compare_dirs

    result = compare_dirs(a, b)
    if as_json:
        emit(result, True)
        return
    table = Table(title=f"keep-masks: A={a}  B={b}")
    for col in (by, "params", "sparsity A", "sparsity B", "cosine", "IoU"):
        table.add_column(col, justify="left" if col == by else "right")
    rows = result["by_layer"] if by == "layer" else result["by_type"]
    for key, r in [*rows.items(), ("[bold]all prunable", result["global"])]:
        table.add_row(key, f"{r['params']:,}", fmt_pct(r["sparsity_a"]), fmt_pct(r["sparsity_b"]),
                      f"{r['cosine']:.4f}", f"{r['iou']:.4f}")
    emit(result, False, table)
