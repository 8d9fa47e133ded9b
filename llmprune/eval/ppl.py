"""Perplexity over non-overlapping windows, as SparseGPT and Wanda report it.

The text is tokenized once and cut into `n = len(ids) // seqlen` full windows (the tail is dropped); each
window is scored on its own (no context carried over) and

    ppl = exp( sum of token NLLs / number of predicted tokens )       # seqlen - 1 predictions per window

which, windows being equal in length, is exp of the mean of the per-window mean NLLs: SparseGPT's number.
Logits are never materialised for a whole batch: the decoder's last hidden states go through the LM head
`chunk_tokens` positions at a time, in fp32, so a 262k vocabulary (Gemma) costs ~1 GB per 1,024 tokens
instead of 4 GB per 8x512 batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float          # mean token NLL (nats)
    tokens: int         # predicted tokens scored
    windows: int
    seqlen: int

    def to_json(self) -> dict:
        return {"ppl": self.ppl, "nll": self.nll, "tokens": self.tokens, "windows": self.windows, "seqlen": self.seqlen}


def max_positions(model) -> int | None:
    """The model's context length from its config, if it states one."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Non-overlapping full windows of a 1-D id tensor: (n, seqlen); the tail shorter than seqlen is dropped."""
    n = ids.numel() // seqlen
    return ids[: n * seqlen].view(n, seqlen)


def text_windows(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None) -> torch.Tensor:
    """The windows `perplexity` scores: (n, seqlen), seqlen capped at the model's max positions."""
    from ..errors import LlmpruneError

    limit = max_positions(model)
    seqlen = min(seqlen, limit) if limit else seqlen
    ids = tokenizer(text, return_tensors="pt").input_ids[0]  # BOS first, as SparseGPT/Wanda tokenize
    wins = windows(ids, seqlen)
    if max_windows is not None:
        wins = wins[:max_windows]
    if len(wins) == 0:
        raise LlmpruneError(f"The text has {ids.numel()} tokens, fewer than one window of {seqlen}: use a longer text or a smaller --seqlen.")
    return wins


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 2048, batch_size: int = 1, max_windows: int | None = None,
               chunk_tokens: int = 1024, step: Callable[[int], None] | None = None) -> Perplexity:
    """Perplexity of `model` on `text` in windows of `seqlen` tokens (capped at the model's max positions);
    `step(n)` is called after every batch of n windows."""
    return windows_perplexity(model, text_windows(model, tokenizer, text, seqlen, max_windows), batch_size,
                              chunk_tokens, step)


@torch.no_grad()
def windows_perplexity(model, wins: torch.Tensor, batch_size: int = 1, chunk_tokens: int = 1024,
                       step: Callable[[int], None] | None = None) -> Perplexity:
    """Perplexity over the windows (n, seqlen), scored `batch_size` at a time on the model's input device
    (that of a dispatched, offloaded model too)."""
    from ..offload import input_device

    device = input_device(model)
    total, count = 0.0, 0
    for start in range(0, len(wins), batch_size):
        batch = wins[start:start + batch_size].to(device)          # (b, seqlen)
        nll_sum, n = window_nll(model, batch, chunk_tokens)
        total += nll_sum
        count += n
        if step:
            step(len(batch))
    nll = total / count
    return Perplexity(ppl=math.exp(nll), nll=nll, tokens=count, windows=len(wins), seqlen=wins.shape[1])


def window_nll(model, input_ids: torch.Tensor, chunk_tokens: int = 1024) -> tuple[float, int]:
    """Sum of next-token NLLs over a batch of windows (b, t) and the number of predictions, b * (t - 1)."""
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", model)
    if head is None or body is model:
        logits = model(input_ids=input_ids).logits                  # (b, t, vocab): small models only
        return _nll_sum(logits[:, :-1], input_ids[:, 1:]), input_ids[:, 1:].numel()
    hidden = body(input_ids=input_ids).last_hidden_state[:, :-1]    # (b, t-1, hidden)
    targets = input_ids[:, 1:]                                      # (b, t-1)
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    total = 0.0
    for i in range(0, targets.numel(), chunk_tokens):
        logits = _postprocess(model, head(hidden[i:i + chunk_tokens]))  # (chunk, vocab)
        total += _nll_sum(logits, targets[i:i + chunk_tokens])
    return total, targets.numel()


def _postprocess(model, logits: torch.Tensor) -> torch.Tensor:
    """What a CausalLM forward does to the head's output: Gemma's soft-capping, Cohere/Granite scaling."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    logits = logits.float()
    scale = getattr(cfg, "logit_scale", None)
    if scale:
        logits = logits * scale
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum").item()
