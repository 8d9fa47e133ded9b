"""Orchestrating a prune: a checkpoint streamed to an output directory, or a loaded model in memory.

Magnitude pruning never materialises the model: tensors stream from the input shards to the output shards
one at a time (with a first histogram pass for the exact global threshold). Calibration methods go through
the layer-by-layer engine. Both paths share the mask code, so `prune` and `eval --sparsity` agree exactly.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .arch import Selector, arch_for
from .config import PruneConfig
from .errors import LlmpruneError
from .io import Checkpoint, ReadAhead, atomic_dir, check_output, copy_aux_files
from .memory import release_large_frees
from .methods.magnitude import GlobalMagnitude, magnitude_mask
from .methods.masks import Threshold, apply_threshold_, key_bits
from .models import resolve_model
from .output import write_checkpoint
from .report import SparsityStats

Step = Callable[[str], None]


def prunable_names(ckpt: Checkpoint, cfg: PruneConfig) -> tuple[Selector, list[str]]:
    """The selector for this checkpoint's architecture and the prunable tensor names, validated."""
    select = Selector(arch_for(ckpt.config), cfg.include, cfg.exclude)
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    if not names:
        raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
    check_divisible(((n, ckpt.info(n).shape) for n in names), cfg)
    return select, names


def check_divisible(named_shapes, cfg: PruneConfig) -> None:
    if cfg.pattern is None:
        return
    for name, shape in named_shapes:
        if shape[-1] % cfg.pattern.m:
            raise LlmpruneError(
                f"Cannot apply {cfg.pattern} to {name}: its input size {shape[-1]} is not divisible by M={cfg.pattern.m}; "
                f"exclude it with --exclude or choose another pattern."
            )


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"llmprune": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for pkg in ("transformers", "safetensors", "accelerate", "lm_eval"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found


def run_record(model: str, src: Path, cfg: PruneConfig, stats: SparsityStats, timings: dict, **extra) -> dict:
    return {"llmprune_version": __version__, "command": sys.argv, "model": str(model), "source": str(src),
            "config": cfg.to_json(), "sparsity": stats.summary(), "timings": timings, "versions": versions(), **extra}


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` intra-op threads (None: unchanged), restoring the previous setting after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prune_checkpoint(model: str, out: str | Path, cfg: PruneConfig, *, overwrite: bool = False,
                     fmt: str = "dense", step: Step | None = None, threads: int | None = 1) -> dict:
    """Prune MODEL into the directory `out` and return the run record (also written as out/run.json).

    Magnitude runs with `threads` intra-op threads (default 1): its elementwise passes are memory-bound
    and already overlap file I/O through a read-ahead thread, and a multi-threaded op waits a whole
    scheduler tick whenever another process holds a core (measured 7.8x slower on a busy 2-core machine).
    """
    release_large_frees()
    with torch_threads(threads if cfg.method == "magnitude" else None):
        return _prune_checkpoint(model, out, cfg, overwrite=overwrite, fmt=fmt, step=step)


def _prune_checkpoint(model, out, cfg, *, overwrite, fmt, step) -> dict:
    out = check_output(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    ckpt = Checkpoint(src)
    select, names = prunable_names(ckpt, cfg)
    if cfg.method != "magnitude":
        from .engine import prune_calibrated  # the layer-by-layer engine (Wanda, SparseGPT)

        return prune_calibrated(model, src, ckpt, select, names, out, cfg, overwrite=overwrite, fmt=fmt, step=step)
    timings = {"resolve": time.perf_counter() - t0}

    t1 = time.perf_counter()
    produce, stats = magnitude_stream(ckpt, select, names, cfg)
    timings["threshold"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    with atomic_dir(out, overwrite) as work:
        copy_aux_files(src, work)
        total = write_checkpoint(ckpt, work, set(names), fmt, output_metadata(cfg), produce, cfg, step)
        timings["write"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        record = run_record(model, src, cfg, stats, timings, format=fmt, **sizes(ckpt, total))
        (work / "run.json").write_text(json.dumps(record, indent=2))
    return record


def magnitude_stream(ckpt: Checkpoint, select: Selector, names: list[str], cfg: PruneConfig,
                     threshold: Threshold | None = None) -> tuple[Callable[[str], torch.Tensor], SparsityStats]:
    """(produce, stats) of a magnitude prune: `produce(name)` reads tensor `name` from `ckpt` and returns it
    pruned (valid until the call after next: read-ahead buffers), counting its zeros into `stats`. Call it
    once per name, in `names`' (file) order.

    A global threshold comes from one histogram pass over the checkpoint, unless `threshold` (for
    `cfg.sparsity`, e.g. from a sweep's one pass for all levels) is given."""
    glob_key = ties = bits = None
    if cfg.pattern is None and cfg.scope == "global":
        if threshold is None:
            glob = GlobalMagnitude(names, ReadAhead(ckpt, sorted(names)), (ckpt.info(n).dtype for n in names),
                                   sum(torch.Size(ckpt.info(n).shape).numel() for n in names), cfg.sparsity)
            threshold, bits = glob.threshold, glob.bits
        else:
            bits = magnitude_bits(ckpt.info(n).dtype for n in names)
        glob_key, ties = threshold.key, dict(zip(sorted(names), threshold.ties))
    stats = SparsityStats()
    read = ReadAhead(ckpt, names)  # names are in file order, the order the writer asks for them

    def produce(name: str) -> torch.Tensor:
        w = read(name)
        if ties is not None:  # one fused pass: threshold, zero, count the zeros before and after
            before, after = apply_threshold_(w, glob_key, ties[name], bits)
        else:
            before = w.numel() - int(torch.count_nonzero(w))
            w.masked_fill_(magnitude_mask(w, cfg).logical_not_(), 0)
            after = None
        stats.add(name, w, *select.describe(name), zeros_before=before, zeros=after)
        return w

    return produce, stats


def magnitude_bits(dtypes) -> int:
    """Key width of the global-magnitude histogram, as GlobalMagnitude picks it (31 for mixed dtypes)."""
    dtypes = set(dtypes)
    return key_bits(dtypes.pop()) if len(dtypes) == 1 else 31


def output_metadata(cfg: PruneConfig) -> dict:
    """What the safetensors metadata of every output shard records about the run."""
    return {"method": cfg.method, "sparsity": str(cfg.pattern or cfg.sparsity), "scope": cfg.scope}


def sizes(ckpt: Checkpoint, output_bytes: int) -> dict:
    """Input and output bytes on disk and their ratio (the compact format's saving)."""
    input_bytes = sum(f.stat().st_size for f in ckpt.files)
    return {"input_bytes": input_bytes, "output_bytes": output_bytes, "size_ratio": output_bytes / input_bytes}


def prune_model_(model: torch.nn.Module, cfg: PruneConfig, calib: torch.Tensor | None = None,
                 step: Step | None = None) -> dict:
    """Prune a loaded model in place with the same masks as `prune_checkpoint`; returns the sparsity summary."""
    select = Selector(arch_for(model.config), cfg.include, cfg.exclude)
    params = [(n, p) for n, p in model.named_parameters() if select(n, tuple(p.shape))]
    if not params:
        raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
    check_divisible(((n, tuple(p.shape)) for n, p in params), cfg)
    if cfg.method != "magnitude":
        from .engine import prune_model_calibrated_

        return prune_model_calibrated_(model, select, cfg, calib, step=step)
    stats = SparsityStats()
    with torch.no_grad():
        if cfg.pattern is None and cfg.scope == "global":
            data = {n: p.data for n, p in params}
            mask = GlobalMagnitude(data, data.__getitem__, (p.dtype for _, p in params),
                                   sum(p.numel() for _, p in params), cfg.sparsity).mask
        else:
            mask = lambda name, w: magnitude_mask(w, cfg)  # noqa: E731
        for name, p in params:
            w = p.data
            before = w.numel() - int(torch.count_nonzero(w))
            w.masked_fill_(mask(name, w.cpu()).to(w.device).logical_not_(), 0)
            stats.add(name, w, *select.describe(name), zeros_before=before)
            if step:
                step(name)
    return stats.summary(tensors=False)
