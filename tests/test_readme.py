"""README.md cannot drift: its commands run as written, its other commands parse, CI runs its test command.

Fenced blocks marked ```` ```bash offline ```` run line by line, in README order, in one scratch directory
(a reader's checkout): `llmprune ...` lines in this process through the same `main` the console script
calls, `.venv/bin/llmprune ...` lines (the set-up command) through the installed script itself. Blocks
marked ```` ```bash offline slow ```` run only with `-m slow`; a command first runs the earlier commands it
may depend on when they were deselected. Every other `llmprune` line (Hub models, your own files) is parsed
by click, so a renamed flag or a bad value fails here too. Set-up steps that are not llmprune commands
(venv, pip) must be the ones the Test command runs, which CI runs verbatim (.ci/run).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from llmprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]   # one llmprune invocation, program name first
    runnable: bool           # in a `bash offline` block
    slow: bool               # in a `bash offline slow` block

    @property
    def args(self) -> list[str]:
        return list(self.words[1:])

    def __str__(self) -> str:
        return shlex.join(self.words)


def readme_blocks(text: str = README) -> list[tuple[list[str], str]]:
    """(info words, body) of every fenced block, in order: ```bash offline -> (["bash", "offline"], ...)."""
    return [(m.group(1).split(), m.group(2)) for m in FENCE.finditer(text)]


def segments(body: str) -> list[list[str]]:
    """The simple commands of a shell block: one per line (comments dropped), `&&` chains split."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return [s for s in out if s]


def readme_commands(text: str = README) -> tuple[list[Command], list[list[str]]]:
    """Every llmprune command of the README's bash blocks, and the other (set-up) steps of offline blocks."""
    commands, other = [], []
    for info, body in readme_blocks(text):
        if not info or info[0] != "bash":
            continue
        runnable, slow = "offline" in info, "slow" in info
        for words in segments(body):
            if Path(words[0]).name == "llmprune":
                commands.append(Command(tuple(words), runnable, slow))
            elif runnable:
                other.append(words)
    return commands, other


COMMANDS, SETUP_STEPS = readme_commands()
RUNNABLE = [c for c in COMMANDS if c.runnable]


def parse(args: list[str]) -> click.Context:
    """Parse an llmprune command line with the real CLI down to its leaf command (nothing is run; input
    paths need not exist: they are the reader's, or made by earlier commands)."""
    convert = click.Path.convert

    def lenient(self, value, param, ctx):
        exists, self.exists = self.exists, False
        try:
            return convert(self, value, param, ctx)
        finally:
            self.exists = exists

    click.Path.convert = lenient
    try:
        ctx = main.make_context("llmprune", list(args))
        cmd = main
        while isinstance(cmd, click.Group):
            rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]
            name, cmd, rest = cmd.resolve_command(ctx, rest)
            ctx = cmd.make_context(name, rest, parent=ctx)
    finally:
        click.Path.convert = convert
    return ctx


# -- the README's structure --------------------------------------------------------------------------------

def test_ci_runs_the_readme_test_command():
    section = README.split("## Test", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert command.splitlines()[-1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_set_up_steps_are_those_the_test_command_runs():
    test_block = README.split("## Test", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    tested = segments(test_block)
    assert SETUP_STEPS, "the set-up block should be marked `bash offline`"
    for step in SETUP_STEPS:
        assert step in tested, f"README runs `{shlex.join(step)}`, which neither CI nor this test runs"


def test_segments_and_markers():
    text = "```bash offline slow\nllmprune a --x 1   # note\nfoo && .venv/bin/llmprune b \\\n  -o 'c d'\n```\n```python\nllmprune z\n```\n"
    commands, other = readme_commands(text)
    assert [str(c) for c in commands] == ["llmprune a --x 1", ".venv/bin/llmprune b -o 'c d'"]
    assert all(c.runnable and c.slow for c in commands) and other == [["foo"]]


def test_the_readme_runs_something_offline_in_the_default_suite():
    assert len([c for c in RUNNABLE if not c.slow]) >= 5 and any(c.slow for c in RUNNABLE)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_readme_command_parses(command):
    ctx = parse(command.args)  # raises click.UsageError on an unknown flag, a bad value or a missing argument
    assert ctx.command.callback is not None


def test_every_readme_output_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = sorted({str(out) for c in COMMANDS if (out := parse(c.args).params.get("output"))})
    assert len(outputs) > 10
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(f"{o}/" for o in outputs),
                          capture_output=True, text=True)
    ignored = {line.rstrip("/") for line in done.stdout.splitlines()}
    assert not set(outputs) - ignored, f"README outputs not in .gitignore: {sorted(set(outputs) - ignored)}"


# -- running the offline blocks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """A scratch directory standing for the reader's checkout, with `.venv` pointing at this interpreter's
    environment (where `pip install -e .` put the `llmprune` script); and the set of commands run so far."""
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return work, set()


def run(command: Command, work: Path) -> None:
    if command.words[0] == "llmprune":
        old_argv, old_cwd = sys.argv, os.getcwd()
        sys.argv = list(command.words)  # run.json records the command line
        os.chdir(work)
        try:
            result = CliRunner().invoke(main, command.args, catch_exceptions=True)
        finally:
            sys.argv = old_argv
            os.chdir(old_cwd)
        assert result.exit_code == 0, f"`{command}` exited {result.exit_code}:\n{result.output[-3000:]}\n{result.exception!r}"
        return
    script = work / command.words[0]
    if not script.exists():
        pytest.skip(f"{command.words[0]} is not installed in {sys.prefix} (pip install -e . makes it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run(list(command.words), cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("index", [pytest.param(i, marks=[pytest.mark.slow] if c.slow else [], id=str(c))
                                   for i, c in enumerate(COMMANDS) if c.runnable])
def test_readme_command_runs_offline(reader, index):
    work, done = reader
    command = COMMANDS[index]
    for i, earlier in enumerate(COMMANDS[:index]):  # what it may depend on, when deselected (fast never needs slow)
        if earlier.runnable and i not in done and (command.slow or not earlier.slow):
            run(earlier, work)
            done.add(i)
    run(command, work)
    done.add(index)


def test_parse_rejects_what_the_cli_rejects():
    with pytest.raises(click.NoSuchOption):
        parse(["prune", "smollm2-135m", "--sparsityy", "0.5", "-o", "x"])
    with pytest.raises(click.BadParameter):
        parse(["sweep", "smollm2-135m", "--limit", "many", "-o", "x"])
    with pytest.raises(click.UsageError):
        parse(["masks", "compare", "only-one"])
    assert parse(["masks", "compare", "a", "b", "--json"]).params["as_json"] is True
