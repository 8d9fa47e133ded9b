"""Resumable progress of a streamed calibration run, kept in `<out>.partial/engine`.

After each decoder layer its pruned tensors are written (to a temporary name, renamed into place) and then
a progress record (with a fingerprint of the run's arguments), so a run killed at any instant (even with
kill -9) leaves a consistent state. Writing happens on a background thread while the next layer computes;
at most one layer is in flight. The calibration activations are not saved: a resumed run recomputes them by
running the calibration batch through the finished (pruned) layers again, with the thread count of the
original run, which reproduces them bit for bit (one forward per finished layer, no disk traffic of
samples x seqlen x hidden per layer).
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class WorkState:
    """Progress of a streamed run inside `<out>.partial/engine`: finished layers and a fingerprint.

    `done` is the last finished layer (-1: none); `threads` the intra-op thread count the run used.
    """

    def __init__(self, root: Path, fingerprint: str):
        self.root, self.fingerprint = root, fingerprint
        self.done, self.threads = -1, torch.get_num_threads()
        progress = root / "progress.json"
        if progress.exists():
            saved = json.loads(progress.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.done, self.threads = int(saved["done"]), int(saved.get("threads", self.threads))
            else:
                log.warning("discarding the unfinished run in %s: it used different arguments", root)
                for f in root.iterdir():
                    f.unlink()
        root.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmprune-save")
        self._pending: Future | None = None

    def layer_file(self, i: int) -> Path:
        return self.root / f"layer-{i:05d}.safetensors"

    def read_layer(self, i: int) -> dict:
        """{checkpoint name: TensorInfo} of finished layer i's saved tensors."""
        from .io import read_safetensors_header

        return read_safetensors_header(self.layer_file(i))[0]

    def _write(self, i: int, tensors: dict[str, torch.Tensor], zeros_before: dict[str, int]) -> None:
        from .io import ShardWriter  # streams tensor bytes to disk

        path = self.layer_file(i)
        tmp = path.with_suffix(".tmp")
        writer = ShardWriter(tmp, list(tensors), {"zeros_before": json.dumps(zeros_before)})
        for name, t in tensors.items():
            writer.write(name, t)
        writer.close()
        os.replace(tmp, path)
        record = self.root / "progress.tmp"
        record.write_text(json.dumps({"fingerprint": self.fingerprint, "done": i, "threads": self.threads}))
        os.replace(record, self.root / "progress.json")

    def save_layer(self, i: int, tensors: dict[str, torch.Tensor], zeros_before: dict[str, int]) -> None:
        """Write layer i's tensors (with each pruned weight's zeros before pruning), then mark it done.

        Returns at once; the previous layer's write is waited for first, so at most one is in flight.
        """
        self.wait()
        self._pending = self._writer.submit(self._write, i, tensors, zeros_before)
        self.done = i

    def wait(self) -> None:
        """Block until the layer being written is on disk (re-raising its error, e.g. a full disk)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._writer.shutdown(wait=True)
