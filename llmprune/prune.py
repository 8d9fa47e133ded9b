"""Orchestrating a prune: a checkpoint streamed to an output directory, or a loaded model in memory.

Dispatch happens once, on the registry's fields (llmprune.methods): data-free methods (magnitude) never
materialise the model: tensors stream from the input shards to the output shards one at a time (after a
histogram pass for the exact global threshold, or a read pass for OWL's layer outlier ratios). Calibrated
methods go through the layer-by-layer engine. Both paths share the mask code, so `prune` and
`eval --sparsity` agree exactly.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from .allocation import Allocation, reuse, weight_allocation
from .arch import Selector, arch_for
from .config import PruneConfig
from .errors import LlmpruneError
from .io import Checkpoint, ReadAhead, atomic_dir, check_not_input, check_output, copy_aux_files
from .memory import release_large_frees
from .methods import get_method
from .methods.magnitude import GlobalMagnitude
from .methods.masks import Threshold, apply_threshold_, check_finite, key_bits
from .models import resolve_model
from .output import write_checkpoint
from .record import output_metadata, run_record, sizes
from .report import SparsityStats

Step = Callable[[str], None]


def prunable_names(ckpt: Checkpoint, cfg: PruneConfig) -> tuple[Selector, list[str]]:
    """The selector for this checkpoint's architecture and the prunable tensor names, validated."""
    check_not_quantized(ckpt.config)
    select = Selector(arch_for(ckpt.config), cfg.include, cfg.exclude)
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    if not names:
        raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
    check_float(((n, ckpt.info(n).dtype) for n in names))
    check_divisible(((n, ckpt.info(n).shape) for n in names), cfg)
    return select, names


def check_not_quantized(config) -> None:
    """Refuse quantized checkpoints (bitsandbytes, GPTQ, AWQ, ...): their stored codes are not the weights, so
    ranking them by magnitude would be silently wrong. Pruning comes first, quantizing after."""
    quant = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config", None)
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise LlmpruneError(f"The model is quantized ({getattr(method, 'value', method)}); llmprune prunes float "
                            f"weights only: prune the original float checkpoint, then quantize the pruned output.")


def check_float(named_dtypes) -> None:
    """Every prunable weight is a floating-point tensor (int8/uint8 codes of a quantized model are not)."""
    for name, dtype in named_dtypes:
        if not dtype.is_floating_point:
            raise LlmpruneError(f"Weight '{name}' is stored as {str(dtype).replace('torch.', '')}, not floating point; "
                                f"llmprune prunes float16/bfloat16/float32 weights (prune before quantizing).")


def check_divisible(named_shapes, cfg: PruneConfig) -> None:
    if cfg.pattern is None:
        return
    for name, shape in named_shapes:
        if shape[-1] % cfg.pattern.m:
            raise LlmpruneError(
                f"Cannot apply {cfg.pattern} to {name}: its input size {shape[-1]} is not divisible by M={cfg.pattern.m}; "
                f"exclude it with --exclude or choose another pattern."
            )


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
    calibrated = get_method(cfg.method).calibrated
    if not calibrated:
        release_large_frees()  # (the calibrated engine sets its own allocator policy)
    with torch_threads(None if calibrated else threads):
        return _prune_checkpoint(model, out, cfg, overwrite=overwrite, fmt=fmt, step=step)


def _prune_checkpoint(model, out, cfg, *, overwrite, fmt, step) -> dict:
    out = check_output(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    check_not_input(out, src)
    ckpt = Checkpoint(src)
    select, names = prunable_names(ckpt, cfg)
    method = get_method(cfg.method)
    if method.calibrated:
        from .streaming import prune_calibrated  # the layer-by-layer engine, streamed

        return prune_calibrated(model, src, ckpt, select, names, out, cfg, overwrite=overwrite, fmt=fmt, step=step)
    timings = {"resolve": time.perf_counter() - t0}

    t1 = time.perf_counter()
    produce, stats, alloc = magnitude_stream(ckpt, select, names, cfg)
    timings["threshold"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    with atomic_dir(out, overwrite) as work:
        copy_aux_files(src, work)
        total = write_checkpoint(ckpt, work, set(names), fmt, output_metadata(cfg), produce, cfg, step)
        timings["write"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        record = run_record(model, src, cfg, stats, timings, format=fmt, **sizes(ckpt, total),
                            allocation=alloc.to_json())
        (work / "run.json").write_text(json.dumps(record, indent=2))
    return record


def magnitude_stream(ckpt: Checkpoint, select: Selector, names: list[str], cfg: PruneConfig,
                     threshold: Threshold | None = None, outliers: Allocation | None = None
                     ) -> tuple[Callable[[str], torch.Tensor], SparsityStats, Allocation]:
    """(produce, stats, allocation) of a data-free prune (magnitude): `produce(name)` reads tensor `name` from
    `ckpt` and returns it pruned (valid until the call after next: read-ahead buffers), counting its zeros
    into `stats`. Call it once per name, in `names`' (file) order.

    A global threshold comes from one histogram pass over the checkpoint, unless `threshold` (for
    `cfg.sparsity`, e.g. from a sweep's one pass for all levels) is given. OWL's layer sparsities come from
    one read pass over the weights, unless `outliers` (an earlier OWL allocation of this checkpoint, e.g. a
    sweep's previous level) gives the outlier ratios."""
    method = get_method(cfg.method)
    glob_key = ties = bits = None
    alloc = reuse(outliers, cfg) or Allocation()
    layer_of = lambda name: select.describe(name)[0]  # noqa: E731
    if cfg.pattern is None and cfg.scope == "global":
        if threshold is None:
            glob = GlobalMagnitude(names, ReadAhead(ckpt, sorted(names)), (ckpt.info(n).dtype for n in names),
                                   sum(torch.Size(ckpt.info(n).shape).numel() for n in names), cfg.sparsity)
            threshold, bits = glob.threshold, glob.bits
        else:
            bits = magnitude_bits(ckpt.info(n).dtype for n in names)
        glob_key, ties = threshold.key, dict(zip(sorted(names), threshold.ties))
    elif cfg.allocation == "owl" and alloc.kind == "uniform":  # OWL's outlier ratios from |W|: one read pass
        alloc = weight_allocation(cfg, names, layer_of, ckpt.read)
    stats = SparsityStats()
    read = ReadAhead(ckpt, names)  # names are in file order, the order the writer asks for them

    def produce(name: str) -> torch.Tensor:
        w = read(name)
        if ties is not None:  # one fused pass: threshold, zero, count the zeros before and after
            before, after = apply_threshold_(w, glob_key, ties[name], bits)
        else:  # (the global threshold's histogram pass already refused NaN/inf)
            check_finite(name, w)
            before = w.numel() - int(torch.count_nonzero(w))
            w = method.prune(w, None, cfg.layer_spec(alloc.sparsity(layer_of(name)), name))
            after = None
        stats.add(name, w, *select.describe(name), zeros_before=before, zeros=after)
        return w

    return produce, stats, alloc


def magnitude_bits(dtypes) -> int:
    """Key width of the global-magnitude histogram, as GlobalMagnitude picks it (31 for mixed dtypes)."""
    dtypes = set(dtypes)
    return key_bits(dtypes.pop()) if len(dtypes) == 1 else 31


def prune_model_(model: torch.nn.Module, cfg: PruneConfig, calib: torch.Tensor | None = None,
                 step: Step | None = None, outliers: Allocation | None = None) -> dict:
    """Prune a loaded model in place with the same masks as `prune_checkpoint`; returns the sparsity summary.

    `outliers`: an earlier OWL allocation of this same dense model (a sweep's previous level), whose outlier
    ratios are reused instead of scored again."""
    check_not_quantized(model.config)
    select = Selector(arch_for(model.config), cfg.include, cfg.exclude)
    params = [(n, p) for n, p in model.named_parameters() if select(n, tuple(p.shape))]
    if not params:
        raise LlmpruneError("No prunable weights matched: check --include/--exclude (regexes on tensor names).")
    check_float(((n, p.dtype) for n, p in params))
    check_divisible(((n, tuple(p.shape)) for n, p in params), cfg)
    method = get_method(cfg.method)
    if method.calibrated:
        from .engine import prune_model_calibrated_

        return prune_model_calibrated_(model, select, cfg, calib, step=step, outliers=outliers)
    stats = SparsityStats()
    alloc, glob = reuse(outliers, cfg) or Allocation(), None
    layer_of = lambda name: select.describe(name)[0]  # noqa: E731
    with torch.no_grad():
        if cfg.pattern is None and cfg.scope == "global":
            data = {n: p.data for n, p in params}
            glob = GlobalMagnitude(data, data.__getitem__, (p.dtype for _, p in params),
                                   sum(p.numel() for _, p in params), cfg.sparsity)
        elif cfg.allocation == "owl" and alloc.kind == "uniform":
            data = {n: p.data for n, p in params}
            alloc = weight_allocation(cfg, data, layer_of, data.__getitem__)
        for name, p in params:
            w = p.data
            if not (cfg.pattern is None and cfg.scope == "global"):
                check_finite(name, w)
            before = w.numel() - int(torch.count_nonzero(w))
            if glob is not None:
                w.masked_fill_(glob.mask(name, w.cpu()).to(w.device).logical_not_(), 0)
            else:
                w.copy_(method.prune(w.cpu(), None, cfg.layer_spec(alloc.sparsity(layer_of(name)), name)))
            stats.add(name, w, *select.describe(name), zeros_before=before)
            if step:
                step(name)
    summary = stats.summary(tensors=False)
    if alloc.kind != "uniform":
        summary["allocation"] = alloc.to_json()
    return summary
