"""Calibration samples: seeded random windows of tokenised text, the input of Wanda and SparseGPT.

As in the SparseGPT and Wanda papers, each sample is `seqlen` consecutive tokens starting at a uniformly
random offset of the tokenised calibration text. The windows depend only on (text, tokenizer, n_samples,
seqlen, seed), so a run is reproducible and its run.json can record exactly what the model saw.
"""
from __future__ import annotations

import hashlib

import torch

from .errors import LlmpruneError


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All token ids of `text` as a 1-D LongTensor (no special tokens added, no truncation)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # (tokens,)


def sample_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`n_samples` windows of `seqlen` tokens at seeded random offsets of the 1-D `ids`: (n_samples, seqlen)."""
    if n_samples < 1 or seqlen < 1:
        raise LlmpruneError(f"Calibration needs at least one sample of at least one token "
                            f"(got calib_samples={n_samples}, seqlen={seqlen}).")
    if ids.numel() < seqlen:
        raise LlmpruneError(f"The calibration text has {ids.numel():,} tokens, fewer than one window of "
                            f"seqlen={seqlen:,}: use a longer text or a smaller --seqlen.")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n_samples,), generator=g)  # (n,)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])  # (n, seqlen)


def calibration_batch(tokenizer, text: str, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Seeded calibration samples of `text`: LongTensor (n_samples, seqlen)."""
    return sample_windows(tokenize(tokenizer, text), n_samples, seqlen, seed)


def context_length(config) -> int | None:
    """The model's maximum positions, from a config dict or a transformers config (None if it has none)."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    return get("max_position_embeddings") or get("n_positions")


def calibration_for(tokenizer, cfg, context: int | None = None) -> torch.Tensor:
    """The seeded batch a run's config asks for (`calib`, `calib_samples`, `seqlen`, `seed`), drawn from the
    train split of its text source, with `seqlen` capped at the model's `context`."""
    from .data import load_text

    seqlen = min(cfg.seqlen, int(context)) if context else cfg.seqlen
    return calibration_batch(tokenizer, load_text(cfg.calib, "train"), cfg.calib_samples, seqlen, cfg.seed)


def describe_batch(batch: torch.Tensor, seed: int) -> dict:
    """What run.json records about the calibration batch: shape, seed and a hash of the token ids (or images)."""
    data = batch if batch.is_floating_point() else batch.to(torch.int64)
    digest = hashlib.sha256(data.contiguous().numpy().tobytes()).hexdigest()[:16]
    shape = {"image_size": int(batch.shape[-1])} if batch.is_floating_point() else {"seqlen": int(batch.shape[1])}
    return {"samples": int(batch.shape[0]), **shape, "seed": int(seed), "sha256_16": digest}
