"""`llmprune convert`: dense <-> compact sparse safetensors, streaming."""
from __future__ import annotations

import click

from ..config import FORMATS, check_choice
from ..io import Checkpoint, check_output
from ..models import resolve_model
from .common import emit, json_option, progress


@click.command("convert")
@click.argument("model")
@click.option("--format", "fmt", required=True, help="dense (zeros in place, loads anywhere) or sparse (values + bitmask).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@json_option
def convert_cmd(model, fmt, output, overwrite, as_json):
    """Rewrite MODEL in another format; the weights read back bit-identical.

    \b
    llmprune convert omp50 --format sparse -o omp50-sparse   # ~0.56x the bytes at 50% fp16
    llmprune convert omp50-sparse --format dense -o omp50-dense
    """
    check_choice("format", fmt, FORMATS)
    check_output(output, overwrite)
    from ..convert import convert_checkpoint

    with progress(len(Checkpoint(resolve_model(model)).names), f"convert to {fmt}") as step:
        record = convert_checkpoint(model, output, fmt, overwrite=overwrite, step=step)
    if as_json:
        emit(record, True)
    else:
        click.echo(f"{output}: {record['output_bytes'] / 1e6:,.1f} MB ({record['size_ratio']:.3f}x the input), "
                   f"{record['tensors_converted']} tensors {'packed' if fmt == 'sparse' else 'unpacked'}")
