"""`llmprune analyze`: the paper's descriptive figures (weight magnitudes, OMP location, sparsification)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmpruneError
from ..io import atomic_dir, check_output
from .common import emit, json_option, progress, stderr


@click.group("analyze")
def analyze_cmd():
    """Describe weights: |w| distributions, where OMP prunes, near-zeros over training (PNG + JSON + CSV).

    \b
    llmprune analyze weights smollm2-135m -o ana             # Fig. 1 and 7 of Jaiswal et al. 2023
    llmprune analyze weights smollm2-135m ./pruned -o cmp    # two models side by side
    llmprune analyze checkpoints ./run -o sparsif            # ./run/checkpoint-<step>/ ... (Fig. 8)
    """


def _done(paths: dict, result, as_json: bool) -> None:
    if as_json:
        emit({"outputs": {k: str(v) for k, v in paths.items()}, "result": result}, True)
    else:
        for kind, p in paths.items():
            click.echo(f"{kind:>9}  {p}")


@analyze_cmd.command("weights")
@click.argument("models", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (PNGs, weights.json, CSVs).")
@click.option("--sparsity", type=float, default=0.5, show_default=True,
              help="Global OMP sparsity whose removed weights are located (same threshold as prune).")
@click.option("--eps", type=float, default=1e-3, show_default=True, help="Near-zero means |w| <= EPS.")
@click.option("--include", multiple=True, help="Regex on tensor names: analyse only these (repeatable).")
@click.option("--exclude", multiple=True, help="Regex on tensor names: skip these (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--no-plot", is_flag=True, help="Write JSON and CSV only.")
@json_option
def weights_cmd(models, output, sparsity, eps, include, exclude, overwrite, no_plot, as_json):
    """|w| histograms per layer and module type, near-zero shares, and where global OMP removes weights.

    MODELS is one model, or two to compare side by side (e.g. a model and its fine-tuned or pruned copy).

    \b
    Writes magnitude_hist.png, omp_location.png, weights.json, by_type.csv, by_layer.csv, histograms.csv.
    """
    from ..analyze import analyze_weights, write_weight_outputs

    if len(models) > 2:
        raise LlmpruneError(f"analyze weights takes one model or two to compare, got {len(models)}.")
    if not 0 <= sparsity < 1:
        raise LlmpruneError(f"--sparsity must be in [0, 1), got {sparsity}.")
    if eps < 0:
        raise LlmpruneError(f"--eps must be >= 0, got {eps}.")
    check_output(output, overwrite)
    results = []
    for m in models:
        stderr.print(f"Analysing {m} ...")
        with progress(None, f"analyse {m}") as step:
            results.append(analyze_weights(m, sparsity, eps, include, exclude, step=step))
    with atomic_dir(output, overwrite) as work:
        paths = write_weight_outputs(results, work, plot=not no_plot)
    paths = {k: _final(output, p) for k, p in paths.items()}
    _done(paths, [_brief(r) for r in results], as_json)


def _brief(r: dict) -> dict:
    """The headline numbers of one analysis for --json (the full result is in weights.json)."""
    strip = lambda t: {k: v for k, v in t.items() if k != "hist"}  # noqa: E731
    return {"model": r["model"], "sparsity": r["sparsity"], "eps": r["eps"], "omp_threshold": r["omp_threshold"],
            "global": strip(r["global"]), "by_type": {k: strip(v) for k, v in r["by_type"].items()}}


@analyze_cmd.command("checkpoints")
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (PNG, checkpoints.json, CSV).")
@click.option("--eps", type=float, multiple=True, help="Near-zero threshold(s) |w| <= EPS (repeatable) [default: 1e-4, 1e-3, 1e-2].")
@click.option("--include", multiple=True, help="Regex on tensor names: analyse only these (repeatable).")
@click.option("--exclude", multiple=True, help="Regex on tensor names: skip these (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--no-plot", is_flag=True, help="Write JSON and CSV only.")
@json_option
def checkpoints_cmd(dirs, output, eps, include, exclude, overwrite, no_plot, as_json):
    """Zero and near-zero counts per checkpoint over training steps ("abrupt sparsification", Fig. 8).

    DIRS are checkpoint directories, or one folder holding checkpoint-<step>/ folders (read in step order).

    \b
    Writes sparsification.png, checkpoints.json, checkpoints.csv.
    """
    from ..analyze import analyze_checkpoints, find_checkpoints, write_checkpoint_outputs

    eps = tuple(eps) or (1e-4, 1e-3, 1e-2)
    if any(e < 0 for e in eps):
        raise LlmpruneError("--eps must be >= 0.")
    check_output(output, overwrite)
    found = find_checkpoints(list(dirs))
    with progress(len(found), "checkpoints") as step:
        result = analyze_checkpoints([p for _, p in found], eps, include, exclude, step=step)
    with atomic_dir(output, overwrite) as work:
        paths = write_checkpoint_outputs(result, work, plot=not no_plot)
    _done({k: _final(output, p) for k, p in paths.items()}, result, as_json)


def _final(output, p) -> Path:
    """Where a file written into the partial directory lives once published."""
    return Path(output) / Path(p).name
