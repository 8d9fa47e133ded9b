"""Turning task examples into model batches: tokenised text pairs, or resized and normalised images."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..images import pixel_values
from .tasks import TaskData


def make_loaders(data: TaskData, model, tokenizer, batch_size: int, eval_batch_size: int, max_length: int,
                 seed: int, model_dir: Path | None = None) -> tuple[DataLoader, DataLoader]:
    """(train loader, shuffled with `seed`; eval loader, in order) yielding dicts the model takes, with labels."""
    gen = torch.Generator().manual_seed(seed)
    if data.kind == "text":
        if tokenizer is None:
            raise ValueError("a text task needs a tokenizer")

        def collate(batch):
            pair = [e.text_pair for e in batch] if batch[0].text_pair is not None else None
            enc = tokenizer([e.text for e in batch], pair, truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            enc["labels"] = torch.tensor([e.label for e in batch])
            return dict(enc)

        train, evals = data.train, data.eval
    else:
        size = model.config.image_size

        def collate(batch):
            x = torch.stack([b[0] for b in batch])  # (B, 3, h, w) in [0, 1]
            return {"pixel_values": pixel_values(x, size, model_dir), "labels": torch.stack([b[1] for b in batch])}

        train, evals = TensorDataset(*data.train), TensorDataset(*data.eval)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate, drop_last=False),
            DataLoader(evals, batch_size=eval_batch_size, shuffle=False, collate_fn=collate))
