"""Writing checkpoints in the compact sparse format (`prune --format sparse`).

`SparseEncoder` plugs into the prune writers (llmprune.prune, llmprune.engine): pruned target weights
become `<name>.values/.bitmask/.row_offsets/.shape` (see format.py), every other tensor is written as is,
and config.json gets a `sparsity_config` entry saying so. `llmprune.models.load_sparse_model`, beside the
other loaders, reads such a directory back.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import LlmpruneError
from .format import DTYPES, SUFFIXES, pack, sparsity_config


class SparseEncoder:
    """Encoder for the prune writers: names() declares each tensor's outputs, encode() yields them in order."""

    def __init__(self, targets: set[str]):
        self.targets = set(targets)

    def names(self, name: str) -> list[str]:
        return [f"{name}.{s}" for s in SUFFIXES] if name in self.targets else [name]

    def encode(self, name: str, w: torch.Tensor):
        if name not in self.targets:
            yield name, w
            return
        if w.dim() != 2 or w.dtype not in DTYPES:
            raise LlmpruneError(f"Cannot write {name} ({w.dtype}, shape {tuple(w.shape)}) in the sparse format: it "
                                f"packs 2-D float32/float16/bfloat16 weights; use --format dense or --exclude it.")
        parts = pack(w)
        for suffix in SUFFIXES:
            yield f"{name}.{suffix}", parts[suffix]

    def finish(self, work: Path, ckpt, cfg) -> None:
        """Add `sparsity_config` to work/config.json (written from the source config if it was not copied)."""
        path = Path(work) / "config.json"
        config = json.loads(path.read_text()) if path.exists() else dict(ckpt.config)
        if cfg is None:  # `convert`: keep what the source's own run recorded, if anything
            run = Path(ckpt.path) / "run.json"
            cfg_json = json.loads(run.read_text()).get("config", {}) if run.exists() else {}
            pattern, sparsity, method = cfg_json.get("pattern"), cfg_json.get("sparsity"), cfg_json.get("method")
        else:
            pattern, sparsity, method = cfg.pattern, cfg.target_sparsity, cfg.method
        config["sparsity_config"] = sparsity_config(pattern, sparsity, modules=self.targets, method=method)
        path.write_text(json.dumps(config, indent=2) + "\n")
