"""What every subcommand shares: error handling, logging (quiet unless -v), progress on stderr, tables or JSON
on stdout, and the flag vocabulary (one name per idea; old spellings stay accepted but hidden)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import ALLOCATIONS, PruneConfig, parse_pattern
from ..errors import LlmpruneError
from ..methods import get_method, method_names

stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)  # notices never break mid-phrase; a terminal wraps them itself


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
        print_table(table)


def print_table(table: Table) -> None:
    """Print a rich table without breaking its words: rich wraps a title or caption to the table's width
    (mid-phrase), so one wider than the table is printed as its own line; and a table is never squeezed into
    80 columns when stdout is a file or a pipe."""
    from rich.cells import cell_len
    from rich.text import Text

    width = stdout.measure(table).maximum
    title = table.title if table.title and cell_len(Text.from_markup(str(table.title)).plain) > width else None
    caption = table.caption if table.caption and max(cell_len(line) for line in Text.from_markup(str(table.caption)).plain.splitlines()) > width else None
    table.title = None if title else table.title
    table.caption = None if caption else table.caption
    wide = None if stdout.is_terminal else max(stdout.width, width)
    if title:
        stdout.print(Text.from_markup(str(title), style="table.title"), soft_wrap=True)
    stdout.print(table, width=wide)
    if caption:
        stdout.print(Text.from_markup(str(caption), style="table.caption"), soft_wrap=True)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def prune_options(f, default_sparsity: float | None = 0.5):
    """--method/--sparsity/--pattern/--scope/--include/--exclude, shared by prune, eval and sweep."""
    opts = [
        click.option("--method", default="magnitude", show_default=True, help=f"Pruning method: {', '.join(method_names())}."),
        click.option("--sparsity", type=float, default=default_sparsity, show_default=True,
                     help="Fraction of prunable weights set to zero, in [0, 1)."),
        click.option("--pattern", default=None, help="N:M pattern instead of --sparsity, e.g. 2:4 (at most N nonzeros per M "
                     "inputs) [default: none, unstructured]."),
        click.option("--scope", default="global", show_default=True,
                     help="global: one threshold over the model (the paper's OMP); layer: same fraction per matrix; row: per output row."),
        click.option("--include", multiple=True, help="Regex on tensor names: prune only these (repeatable) "
                     "[default: every linear of the decoder/encoder blocks]."),
        click.option("--exclude", multiple=True, help="Regex on tensor names: never prune these (repeatable) [default: none]."),
        *_allocation_opts(False),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def allocation_options(multiple: bool = False):
    """Decorator adding --allocation/--owl-m/--owl-lambda (`multiple`: --allocation repeatable, as in sweep)."""
    def decorate(f):
        for opt in reversed(_allocation_opts(multiple)):
            f = opt(f)
        return f
    return decorate


def _allocation_opts(multiple: bool) -> list:
    """How the target is shared out over decoder layers: uniform, or OWL (Yin et al. 2024)."""
    return [
        click.option("--allocation", "allocations" if multiple else "allocation", multiple=multiple,
                     default=("uniform",) if multiple else "uniform", show_default=True,
                     help=f"Layer sparsities: {', '.join(ALLOCATIONS)} (OWL: layers with more outliers pruned less, "
                          "averaging to the target; not with --pattern)" + (" (repeatable: one curve each)." if multiple else ".")),
        click.option("--owl-m", type=float, default=5.0, show_default=True,
                     help="OWL: a score is an outlier above M x its layer's mean score."),
        click.option("--owl-lambda", type=float, default=0.08, show_default=True,
                     help="OWL: the largest deviation of a layer's sparsity from the target."),
    ]


def make_config(method, sparsity, pattern, scope, include=(), exclude=(), **calib) -> PruneConfig:
    """Validate the flags into a PruneConfig before any weights are loaded."""
    if pattern is not None and sparsity is not None and explicit("sparsity"):
        raise LlmpruneError(f"Give --sparsity or --pattern, not both: the {pattern} pattern fixes the sparsity "
                            f"(1 - N/M).")
    if get_method(method.lower()).calibrated and pattern is None and scope.lower() == "global" and explicit("scope"):
        raise LlmpruneError(f"{method} compares scores within a layer: use --scope layer or row, not global "
                            f"(global is magnitude's one threshold over the model).")
    return PruneConfig(method=method.lower(), sparsity=0.0 if sparsity is None else sparsity,
                       pattern=parse_pattern(pattern), scope=scope.lower(), include=tuple(include),
                       exclude=tuple(exclude), **{k: v for k, v in calib.items() if v is not None})


INTERRUPTED = ("Interrupted: nothing was published under the output name; rerun the same command to resume "
               "(calibrated prune, sweep) or start clean.")


def honour_sigint():
    """Make SIGINT raise KeyboardInterrupt (Python's own handler) even where the parent process ignored it;
    returns the previous handler (None off the main thread, where handlers cannot be set).

    A shell starts background jobs (`llmprune prune ... &`, scripts, some job runners) with SIGINT ignored,
    and Python keeps an ignored SIGINT ignored: `kill -INT` then did nothing and the run went on to publish
    its output. The CLI takes SIGINT back, so every command stops on it and cleans up.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def exit_on_interrupt():
    """Ctrl-C inside the block: one line on stderr and exit code 130 (outputs are published atomically)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)


def configure_logging(verbose: bool) -> None:
    """Quiet by default: warnings only, plus the first-run notices of the asset cache (a model being fetched or
    converted once). `-v` (before or after the subcommand) adds every library's progress details."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    os.environ["TRANSFORMERS_VERBOSITY"] = "info" if verbose else "error"  # its load reports are details too
    if "transformers" in sys.modules:  # already imported: the variable above was read
        sys.modules["transformers"].utils.logging.set_verbosity(logging.INFO if verbose else logging.ERROR)
    notices = logging.getLogger("llmprune.assets")
    if not any(isinstance(h, _StderrHandler) for h in notices.handlers):
        notices.addHandler(_StderrHandler())
    notices.setLevel(logging.INFO)
    notices.propagate = False


class _StderrHandler(logging.Handler):
    """Plain messages on whatever sys.stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _verbose(ctx, param, value) -> None:
    if value:
        configure_logging(True)


def add_verbose_option(cmd: click.Command) -> None:
    """Give a subcommand (and every subcommand of a subgroup) its own -v/--verbose."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            add_verbose_option(sub)
        return
    if not any("--verbose" in p.opts for p in cmd.params):
        cmd.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True,
                                       callback=_verbose, help="Log progress details on stderr (quiet by default)."))


class OldNames(click.Option):
    """An option whose extra long names are old spellings: still accepted, left out of --help."""

    def __init__(self, *args, old: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.old = tuple(old)

    def get_help_record(self, ctx):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.old]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(*names: str, old: tuple[str, ...] = (), **kwargs):
    """click.option under its current name, also accepting the `old` spellings (hidden from --help):
    `option("--train-data", "train_file", old=("--train",), ...)`."""
    flags = [n for n in names if n.startswith("-")]
    dest = [n for n in names if not n.startswith("-")]
    return click.option(*flags, *old, *dest, cls=OldNames, old=old, **kwargs)


def split_list(values) -> tuple[str, ...]:
    """A repeatable flag that also takes comma lists: ("a,b", "c") -> ("a", "b", "c"), first occurrence kept."""
    items = [v.strip() for value in values for v in str(value).split(",")]
    return tuple(dict.fromkeys(v for v in items if v))


class Group(click.Group):
    """Turns LlmpruneError (and a missing optional dependency) into a one-line error with exit code 1,
    Ctrl-C into one line with exit code 130, and gives every subcommand -v/--verbose."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        add_verbose_option(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx):
        previous = honour_sigint()
        try:
            with exit_on_interrupt():
                try:
                    return super().invoke(ctx)
                except LlmpruneError as e:
                    raise click.ClickException(str(e)) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def explicit(name: str) -> bool:
    """True when the current command's option `name` was given on the command line (not its default)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"
