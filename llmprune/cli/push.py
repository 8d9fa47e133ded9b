"""`llmprune push`: upload a pruned output directory to the Hugging Face Hub with a generated model card."""
from __future__ import annotations

import click
from rich.table import Table

from .common import emit, json_option, stderr, stdout


@click.command("push")
@click.argument("folder", metavar="DIR", type=click.Path())
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", "--branch", "revision", default=None, help="Branch to push to (created if missing) [default: main].")
@click.option("--commit-message", default=None, help="Commit message [default: names method, sparsity and llmprune version].")
@click.option("--base-model", default=None, help="Hub id for the card's base_model (default: from run.json when it is a Hub id or built-in).")
@click.option("--force", is_flag=True, help="Overwrite a repo that already holds a different model (deletes its files not in DIR).")
@click.option("--dry-run", is_flag=True, help="Print the files, sizes and model card that would be uploaded; no network.")
@json_option
def push_cmd(folder, repo_id, private, revision, commit_message, base_model, force, dry_run, as_json):
    """Upload DIR (an output of `llmprune prune`, dense or sparse format) to the Hub as REPO_ID.

    The model card (README.md) is generated from DIR/run.json and, when present, DIR/eval*.json
    (`llmprune eval ... --json > DIR/eval.json`), DIR/summary.json and DIR/sweep.png (`llmprune sweep`).
    The token comes from HF_TOKEN or `hf auth login`. After a network failure, rerun the same command:
    files already uploaded are skipped.

    \b
    llmprune push ./pruned me/smollm2-135m-50pct --dry-run
    llmprune push ./pruned me/smollm2-135m-50pct --private
    """
    from ..push import plan_push, push

    plan = plan_push(folder, repo_id, revision=revision, private=private, commit_message=commit_message,
                     base_model=base_model)
    if dry_run:
        if as_json:
            emit({**plan.to_json(), "dry_run": True}, True)
            return
        table = Table(title=f"Dry run: would upload to {repo_id}{'@' + revision if revision else ''}"
                            f"{' (private)' if private else ''}: {plan.commit_message!r}")
        for col in ("file", "bytes", "storage"):
            table.add_column(col, justify="right" if col == "bytes" else "left")
        for f in plan.files:
            table.add_row(f.path_in_repo, f"{f.size:,}", "LFS" if f.lfs else "git")
        table.add_row("README.md (generated card)", f"{len(plan.card.encode()):,}", "git")
        table.add_row("[bold]total", f"[bold]{plan.total_bytes:,}", "")
        stdout.print(table)
        click.echo("\n----- README.md -----")
        click.echo(plan.card)
        return
    stderr.print(f"Uploading {len(plan.files) + 1} files ({plan.total_bytes / 2**20:,.1f} MiB) to {repo_id} ...")
    url = push(plan, force=force)
    if as_json:
        emit({**plan.to_json(), "commit_url": url}, True)
    else:
        click.echo(url)
