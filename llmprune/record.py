"""What every run records in its run.json: versions, the resolved config, sizes, and the shards' metadata.

Shared by the streaming magnitude prune (prune.py), the calibration engine (engine.py, streaming.py), sweeps, fine-tuning
and tickets; it imports none of them.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

from . import __version__
from .config import PruneConfig
from .provenance import provenance
from .report import SparsityStats


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
            "config": cfg.to_json(), "sparsity": stats.summary(), "timings": timings, "versions": versions(),
            "provenance": provenance(model, src), **extra}


def output_metadata(cfg: PruneConfig) -> dict:
    """What the safetensors metadata of every output shard records about the run."""
    return {"method": cfg.method, "sparsity": str(cfg.pattern or cfg.sparsity), "scope": cfg.scope}


def sizes(ckpt, output_bytes: int) -> dict:
    """Input and output bytes on disk (of the `io.Checkpoint` read) and their ratio (the compact format's saving)."""
    input_bytes = sum(f.stat().st_size for f in ckpt.files)
    return {"input_bytes": input_bytes, "output_bytes": output_bytes, "size_ratio": output_bytes / input_bytes}
