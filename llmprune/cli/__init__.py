"""The `llmprune` command: a click group; each subcommand lives in its own small module."""
from __future__ import annotations

import click

from .. import __version__
from .common import Group, configure_logging, exit_on_interrupt, honour_sigint


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="llmprune")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details on stderr (quiet by default).")
def main(verbose: bool) -> None:
    """Make large language models sparse in one shot, find how far they prune for free, and ship them.

    \b
    llmprune prune smollm2-135m --sparsity 0.5 -o out     # global one-shot magnitude (OMP)
    llmprune inspect out                                  # where the zeros are
    """
    configure_logging(verbose)


def _register() -> None:
    from .analyze import analyze_cmd
    from .compare import compare_cmd
    from .convert import convert_cmd
    from .eval import eval_cmd
    from .finetune import finetune_cmd
    from .generate import generate_cmd
    from .inspect import inspect_cmd
    from .masks import masks_cmd
    from .prune import prune_cmd
    from .push import push_cmd
    from .sweep import plot_cmd, sweep_cmd

    for cmd in (prune_cmd, inspect_cmd, eval_cmd, sweep_cmd, plot_cmd, convert_cmd, finetune_cmd, masks_cmd,
                compare_cmd, push_cmd, analyze_cmd, generate_cmd):
        main.add_command(cmd)


honour_sigint()  # even a background job's Ctrl-C stops the (slow) imports below
with exit_on_interrupt():
    _register()
