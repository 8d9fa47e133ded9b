"""Resumable progress of a streamed calibration run, kept in `<out>.partial/engine`.

After each decoder layer: its pruned tensors, the next layer's input activations and a progress record
(with a fingerprint of the run's arguments), each written to a temporary name and renamed into place, so a
run killed at any instant (even with kill -9) leaves a consistent state to resume from.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class WorkState:
    """Progress of a streamed run inside `<out>.partial/engine`: finished layers, activations, a fingerprint.

    Each step is a file renamed into place, so a run killed at any instant leaves a consistent state.
    """

    def __init__(self, root: Path, fingerprint: str):
        self.root, self.fingerprint = root, fingerprint
        self.done = -1
        progress = root / "progress.json"
        if progress.exists():
            saved = json.loads(progress.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.done = int(saved["done"])
            else:
                log.warning("discarding the unfinished run in %s: it used different arguments", root)
                for f in root.iterdir():
                    f.unlink()
        root.mkdir(parents=True, exist_ok=True)

    def layer_file(self, i: int) -> Path:
        return self.root / f"layer-{i:05d}.safetensors"

    def acts_file(self, i: int) -> Path:
        return self.root / f"acts-{i:05d}.safetensors"

    def _save(self, tensors: dict, path: Path, metadata: dict | None = None) -> None:
        from .io import ShardWriter  # streams tensor bytes to disk: no second copy of the activations

        tmp = path.with_suffix(".tmp")
        writer = ShardWriter(tmp, list(tensors), metadata)
        for name, t in tensors.items():
            writer.write(name, t)
        writer.close()
        os.replace(tmp, path)

    def save_layer(self, i: int, tensors: dict[str, torch.Tensor], zeros_before: dict[str, int]) -> None:
        """Layer i's tensors, with each pruned weight's count of zeros before pruning (for the report)."""
        self._save(tensors, self.layer_file(i), {"zeros_before": json.dumps(zeros_before)})

    def finish_layer(self, i: int, next_inputs: torch.Tensor | None) -> None:
        """Record layer i done; `next_inputs` are layer i+1's inputs (None after the last layer)."""
        if next_inputs is not None:
            self._save({"hidden": next_inputs}, self.acts_file(i + 1))
        tmp = self.root / "progress.tmp"
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": i}))
        os.replace(tmp, self.root / "progress.json")
        self.done = i
        self.acts_file(i).unlink(missing_ok=True)

    def load_acts(self, i: int) -> torch.Tensor:
        from .io import read_safetensors_header, read_tensor

        return read_tensor(read_safetensors_header(self.acts_file(i))[0]["hidden"])
