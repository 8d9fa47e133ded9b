"""Calibration samples: seeded windows of tokenised text, the input of Wanda and SparseGPT.

Named sources are sampled exactly as the SparseGPT and Wanda reference loaders do (`datautils.py`), with
Python's `random` seeded the same way, so a seed gives the windows the papers' code would:
- c4: for every sample, random documents of the train shard are drawn until one has more than `seqlen`
  tokens, then a random window of `seqlen` tokens inside it; windows never straddle documents.
- wikitext2: random windows of the whole train split joined with spaces (the reference does not split it
  into documents either).
Other text (the offline pydoc default, a .txt or .jsonl file) is one string: `seqlen`-token windows at
seeded uniform offsets (torch's generator). Either way the windows depend only on (text, tokenizer,
n_samples, seqlen, seed), so a run is reproducible and its run.json records exactly what the model saw.
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

import torch

from .errors import LlmpruneError

MAX_DRAWS = 10_000  # c4: documents drawn in a row without one longer than seqlen before giving up


def tokenize(tokenizer, text: str, special_tokens: bool = False) -> torch.Tensor:
    """All token ids of `text` as a 1-D LongTensor (no truncation; BOS/EOS only with `special_tokens`)."""
    ids = tokenizer(text, add_special_tokens=special_tokens, return_attention_mask=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # (tokens,)


def _check_counts(n_samples: int, seqlen: int) -> None:
    if n_samples < 1 or seqlen < 1:
        raise LlmpruneError(f"Calibration needs at least one sample of at least one token "
                            f"(got calib_samples={n_samples}, seqlen={seqlen}).")


def _too_short(tokens: int, seqlen: int) -> LlmpruneError:
    return LlmpruneError(f"The calibration text has {tokens:,} tokens, fewer than one window of "
                         f"seqlen={seqlen:,}: use a longer text or a smaller --seqlen.")


def sample_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`n_samples` windows of `seqlen` tokens at seeded random offsets of the 1-D `ids`: (n_samples, seqlen)."""
    _check_counts(n_samples, seqlen)
    if ids.numel() < seqlen:
        raise _too_short(ids.numel(), seqlen)
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n_samples,), generator=g)  # (n,)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])  # (n, seqlen)


def reference_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The reference wikitext2 sampling: `random.seed(seed)`, then per sample a window starting at
    `random.randint(0, len(ids) - seqlen - 1)` of the 1-D `ids`: (n_samples, seqlen)."""
    _check_counts(n_samples, seqlen)
    if ids.numel() <= seqlen:
        raise _too_short(ids.numel(), seqlen + 1)
    rng = random.Random(int(seed))
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(n_samples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])  # (n, seqlen)


def document_windows(tokenizer, documents: Sequence, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The reference c4 sampling: `random.seed(seed)`; per sample, draw documents (`documents[i]["text"]`,
    i = randint(0, len - 1)) until one has more than `seqlen` tokens, then a random window inside it."""
    _check_counts(n_samples, seqlen)
    if len(documents) == 0:
        raise LlmpruneError("The calibration source has no documents.")
    rng = random.Random(int(seed))
    out = []
    for _ in range(n_samples):
        for _draw in range(MAX_DRAWS):
            ids = tokenize(tokenizer, documents[rng.randint(0, len(documents) - 1)]["text"], special_tokens=True)
            if ids.numel() > seqlen:
                break
        else:
            raise LlmpruneError(f"None of {MAX_DRAWS:,} documents drawn in a row has more than seqlen={seqlen:,} tokens: "
                                f"use a smaller --seqlen.")
        start = rng.randint(0, ids.numel() - seqlen - 1)
        out.append(ids[start : start + seqlen])
    return torch.stack(out)  # (n, seqlen)


def calibration_batch(tokenizer, text: str, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Seeded calibration samples of one `text`: LongTensor (n_samples, seqlen)."""
    return sample_windows(tokenize(tokenizer, text), n_samples, seqlen, seed)


def context_length(config) -> int | None:
    """The model's maximum positions, from a config dict or a transformers config (None if it has none)."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    return get("max_position_embeddings") or get("n_positions")


def calibration_for(tokenizer, cfg, context: int | None = None) -> torch.Tensor:
    """The seeded batch a run's config asks for (`calib`, `calib_samples`, `seqlen`, `seed`), drawn from the
    train split of its text source as the module docstring says, with `seqlen` capped at the model's `context`."""
    from .data import c4_documents, load_text

    seqlen = min(cfg.seqlen, int(context)) if context else cfg.seqlen
    source = cfg.calib or "pydoc"
    if source == "c4":
        return document_windows(tokenizer, c4_documents("train"), cfg.calib_samples, seqlen, cfg.seed)
    if source == "wikitext2":
        ids = tokenize(tokenizer, load_text(source, "train"), special_tokens=True)
        return reference_windows(ids, cfg.calib_samples, seqlen, cfg.seed)
    return calibration_batch(tokenizer, load_text(source, "train"), cfg.calib_samples, seqlen, cfg.seed)


def describe_batch(batch: torch.Tensor, seed: int) -> dict:
    """What run.json records about the calibration batch: shape, seed and a hash of the token ids (or images)."""
    data = batch if batch.is_floating_point() else batch.to(torch.int64)
    digest = hashlib.sha256(data.contiguous().numpy().tobytes()).hexdigest()[:16]
    shape = {"image_size": int(batch.shape[-1])} if batch.is_floating_point() else {"seqlen": int(batch.shape[1])}
    return {"samples": int(batch.shape[0]), **shape, "seed": int(seed), "sha256_16": digest}
