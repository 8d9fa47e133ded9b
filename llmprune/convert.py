"""`convert`: rewrite a checkpoint between the dense layout and llmprune's compact sparse format, streaming."""
from __future__ import annotations

import json

import time
from pathlib import Path

from .arch import Selector, arch_for
from .io import Checkpoint, atomic_dir, check_not_input, check_output, copy_aux_files
from .models import resolve_model
from .output import write_checkpoint


def convert_checkpoint(model: str, out: str | Path, fmt: str, *, overwrite: bool = False, step=None) -> dict:
    """Write MODEL to `out` in `fmt` ("dense" or "sparse"); weights read back bit-identical (-0.0 as +0.0)."""
    out = check_output(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    check_not_input(out, src)
    ckpt = Checkpoint(src)
    if fmt == "sparse":  # pack the prunable matrices; everything else is copied through
        select = Selector(arch_for(ckpt.config))
        targets = {n for n in ckpt.names if select(n, ckpt.info(n).shape)}
    else:  # unpack whatever is packed
        targets = {n for n in ckpt.names if ckpt.info(n).packed}
    with atomic_dir(out, overwrite) as work:
        copy_aux_files(src, work)
        total = write_checkpoint(ckpt, work, targets, fmt, {"converted_to": fmt}, step=step)
        record = {"source": str(src), "format": fmt, "tensors_converted": len(targets),
                  "input_bytes": sum(f.stat().st_size for f in ckpt.files), "output_bytes": total,
                  "seconds": time.perf_counter() - t0}
        record["size_ratio"] = record["output_bytes"] / record["input_bytes"]
        if (src / "run.json").exists():  # keep the pruning record; note the conversion beside it
            run = json.loads((src / "run.json").read_text())
            run.setdefault("conversions", []).append(record)
            (work / "run.json").write_text(json.dumps(run, indent=2))
        else:
            (work / "run.json").write_text(json.dumps({"conversions": [record]}, indent=2))
    return record



