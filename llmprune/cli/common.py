"""What every subcommand shares: error handling, progress on stderr, tables or JSON on stdout."""
from __future__ import annotations

import contextlib
import json
import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import METHODS, PruneConfig, parse_pattern
from ..errors import LlmpruneError

stdout = Console()
stderr = Console(stderr=True)


@contextlib.contextmanager
def progress(total: int, description: str, console: Console | None = None):
    """Yield a `step(name)` callback advancing a rich bar on stderr, or `console` (one step per tensor or layer)."""
    console = console or stderr
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[item]}", style="dim"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total, item="")
        yield lambda item="": bar.update(task, advance=1, item=str(item)[-48:])


def emit(data, as_json: bool, table: Table | None = None) -> None:
    """Results go to stdout: JSON when asked, else the rich table."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif table is not None:
        stdout.print(table)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def prune_options(f, default_sparsity: float | None = 0.5):
    """--method/--sparsity/--pattern/--scope/--include/--exclude, shared by prune, eval and sweep."""
    opts = [
        click.option("--method", default="magnitude", show_default=True, help=f"Pruning method: {', '.join(METHODS)}."),
        click.option("--sparsity", type=float, default=default_sparsity, show_default=True,
                     help="Fraction of prunable weights set to zero, in [0, 1)."),
        click.option("--pattern", default=None, help="N:M pattern instead of --sparsity, e.g. 2:4 (at most N nonzeros per M inputs)."),
        click.option("--scope", default="global", show_default=True,
                     help="global: one threshold over the model (the paper's OMP); layer: same fraction per matrix; row: per output row."),
        click.option("--include", multiple=True, help="Regex on tensor names: prune only these (repeatable)."),
        click.option("--exclude", multiple=True, help="Regex on tensor names: never prune these (repeatable)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_config(method, sparsity, pattern, scope, include=(), exclude=(), **calib) -> PruneConfig:
    """Validate the flags into a PruneConfig before any weights are loaded."""
    return PruneConfig(method=method.lower(), sparsity=0.0 if sparsity is None else sparsity,
                       pattern=parse_pattern(pattern), scope=scope.lower(), include=tuple(include),
                       exclude=tuple(exclude), **{k: v for k, v in calib.items() if v is not None})


class Group(click.Group):
    """Turns LlmpruneError (and a missing optional dependency) into a one-line error with exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LlmpruneError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            stderr.print("Interrupted: nothing was published under the output name (calibrated runs resume when rerun with the same arguments).")
            sys.exit(130)


def fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"
