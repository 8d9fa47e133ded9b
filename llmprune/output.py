"""Writing a pruned or converted checkpoint: shards that mirror the input's layout, in dense or sparse format.

One writer for every producer (streaming magnitude prune, the calibration engine, `convert`): tensors named
in `targets` are produced by a callback and encoded (dense, or packed in the compact sparse format); every
other tensor is copied through byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .config import PruneConfig
from .errors import LlmpruneError
from .io import Checkpoint, ShardWriter, output_file_name, write_index


class DenseEncoder:
    """Writes tensors as they are (pruned weights hold zeros)."""

    def __init__(self, targets: set[str]):
        self.targets = targets

    def names(self, name: str) -> list[str]:
        return [name]

    def encode(self, name: str, w: torch.Tensor):
        yield name, w

    def finish(self, work: Path, ckpt: Checkpoint, cfg: PruneConfig | None) -> None:
        path = Path(work) / "config.json"
        if path.exists():  # a dense copy of a sparse-format checkpoint is a plain checkpoint again
            config = json.loads(path.read_text())
            if config.pop("sparsity_config", None) is not None:
                path.write_text(json.dumps(config, indent=2) + "\n")


def encoder(fmt: str, targets: set[str]):
    if fmt == "dense":
        return DenseEncoder(targets)
    if fmt == "sparse":
        from .sparse.writer import SparseEncoder

        return SparseEncoder(targets)
    raise LlmpruneError(f"Unknown format '{fmt}'. Available: dense, sparse")


def write_checkpoint(ckpt: Checkpoint, work: Path, targets: set[str], fmt: str, meta: dict,
                     produce: Callable[[str], torch.Tensor] | None = None, cfg: PruneConfig | None = None,
                     step: Callable[[str], None] | None = None, packed: set[str] | None = None) -> int:
    """Write all of `ckpt` into `work` (one output shard per input file); returns the bytes written.

    `produce(name)` gives the final tensor of each target (default: read it unchanged); `packed` are the
    targets stored compactly when fmt is "sparse" (default: all targets).
    """
    produce = produce or ckpt.read
    enc = encoder(fmt, targets if packed is None else packed)
    meta = {"format": "pt", "llmprune_version": __version__, **meta}
    weight_map, total = {}, 0
    for file, names in ckpt.by_file().items():
        shard = output_file_name(file)
        writer = ShardWriter(work / shard, [o for n in names for o in enc.names(n)], {**ckpt.metadata.get(file.name, {}), **meta})
        for name in names:
            if name in targets:
                for out_name, t in enc.encode(name, produce(name)):
                    writer.write(out_name, t)
                    weight_map[out_name] = shard
            else:  # untouched (embeddings, norms, ...): bytes copied through, never materialised
                writer.copy(name, ckpt)
                weight_map[name] = shard
            if step:
                step(name)
        writer.close()
        total += writer.nbytes
    write_index(work, weight_map, total)
    enc.finish(work, ckpt, cfg)
    return total
