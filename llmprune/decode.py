"""Token-by-token generation through the KV cache, timed: what `llmprune generate` and the decode benchmark run.

`generate` is one loop for every causal LM: a prefill forward over the prompt, then one forward per new
token with its KV cache; tokens/s counts only those single-token steps (batch rows x steps / time),
the speed a user waits on and the one sparse kernels change. `next_token` is the pure choice of a token
from logits (greedy, or temperature / top-k / top-p sampling). `compare` times several variants of one
model round-robin (so load from other processes hits them alike) and reports medians; `tie_check` tells
whether two models' greedy choices differ by more than bf16 rounding.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from .errors import LlmpruneError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature 0 is greedy (argmax); otherwise softmax(logits / T)
    restricted to the top_k tokens and/or the smallest set with probability >= top_p."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise LlmpruneError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise LlmpruneError(f"--top-k must be a positive integer, got {self.top_k}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LlmpruneError(f"--top-p must be in (0, 1], got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """New token ids (batch, n) and timings: prefill (prompt + first token) and the decode steps after it."""
    ids: torch.Tensor
    prefill_s: float
    decode_s: float
    decode_steps: int
    stopped_at_eos: bool = False

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: generated tokens per second over the single-token steps (all batch rows)."""
        return self.ids.shape[0] * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (batch, 1) from last-position logits (batch, vocab), in fp32 whatever the model's dtype."""
    logits = logits.float()
    if sampling.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (batch, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= sampling.top_p  # tokens past the nucleus (the first always stays)
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def _past(out):
    cache = getattr(out, "cache", None)  # transformers >= 5.2x names it `cache`, before `past_key_values`
    return cache if cache is not None else out.past_key_values


def _cache_keyword(model) -> str:
    """The KV-cache keyword this model's forward takes (`cache`, or the older `past_key_values`)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling = Sampling(),
             eos_ids=()) -> Generation:
    """Generate up to max_new_tokens for input_ids (batch, prompt) of equal-length prompts (no padding).

    Stops early once every row has produced one of `eos_ids` (rows that finished earlier keep decoding,
    their later tokens are still returned: callers trim at the first eos).
    """
    if max_new_tokens < 1:
        raise LlmpruneError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    generator = None if sampling.greedy else torch.Generator(device=device).manual_seed(sampling.seed)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)

    def finished(tok):
        nonlocal done
        if eos.numel():
            done = done | torch.isin(tok[:, 0], eos)
        return bool(eos.numel()) and bool(done.all())

    key = _cache_keyword(model)
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids, use_cache=True)
    tok = next_token(out.logits[:, -1], sampling, generator)  # (batch, 1)
    _sync(device)
    prefill_s = time.perf_counter() - start
    ids, cache, stop = [tok], _past(out), finished(tok)
    start = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        if stop:
            break
        out = model(tok, **{key: cache}, use_cache=True)
        tok = next_token(out.logits[:, -1], sampling, generator)
        ids.append(tok)
        cache, stop = _past(out), finished(tok)
    _sync(device)
    decode_s = time.perf_counter() - start
    return Generation(torch.cat(ids, dim=1).cpu(), prefill_s, decode_s, len(ids) - 1, stop)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- comparing variants


@dataclass
class Timed:
    """One variant's runs: the last generation, and tokens/s of each repeat."""
    generation: Generation
    tokens_per_s: list[float] = field(default_factory=list)

    @property
    def median_tokens_per_s(self) -> float:
        return statistics.median(self.tokens_per_s)


def compare(models: dict, input_ids: torch.Tensor, max_new_tokens: int, repeats: int = 3,
            sampling: Sampling = Sampling(), eos_ids=(), warmup: bool = True) -> dict[str, Timed]:
    """{name: Timed}: each model generates `repeats` times, the variants interleaved round-robin."""
    if warmup:  # first calls build kernel plans and caches: keep them out of the timings
        for model in models.values():
            generate(model, input_ids, min(2, max_new_tokens), sampling)
    timed: dict[str, Timed] = {}
    for _ in range(max(repeats, 1)):
        for name, model in models.items():
            g = generate(model, input_ids, max_new_tokens, sampling, eos_ids)
            entry = timed.setdefault(name, Timed(g))
            entry.generation = g
            entry.tokens_per_s.append(g.tokens_per_s)
    return timed


@torch.inference_mode()
def forced_logits(model, input_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """fp32 next-token logits (steps, vocab) of `model` fed the prompt (1, T), then ids (steps,) one at a time."""
    device = next(model.parameters()).device
    key = _cache_keyword(model)
    out = model(input_ids.to(device), use_cache=True)
    logits = [out.logits[0, -1].float().cpu()]
    for t in ids[:-1].tolist():
        out = model(torch.tensor([[t]], device=device), **{key: _past(out)}, use_cache=True)
        logits.append(out.logits[0, -1].float().cpu())
    return torch.stack(logits)


def tie_check(ref: torch.Tensor, test: torch.Tensor, ulps: float = 2.0) -> dict:
    """How test's greedy choices (argmax of logits (steps, vocab)) agree with ref's, fed the same tokens.

    A step where they differ is a tie when ref scores test's pick within `ulps` bf16 units (2^-7 relative)
    of ref's best: bf16 logits are rounded to 8 bits, and summing in another order flips such near-equal
    choices. {"steps", "exact", "ties", "real": [steps that differ by more]}.
    """
    best = ref.max(dim=1).values  # (steps,)
    pick = test.argmax(dim=1)
    ulp = torch.exp2(torch.floor(torch.log2(best.abs().clamp_min(1e-6))) - 7)
    gap = best - ref.gather(1, pick[:, None])[:, 0]
    same = pick == ref.argmax(dim=1)
    real = (~same) & (gap > ulps * ulp)
    return {"steps": len(pick), "exact": int(same.sum()), "ties": int((~same & ~real).sum()),
            "real": real.nonzero()[:, 0].tolist()}


def dense_variants(model, dtypes=(torch.float32, torch.bfloat16)) -> dict:
    """{"dense fp32": ..., "dense bf16": ...}: copies of `model` in each dtype (the model itself for its own)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    own = next(model.parameters()).dtype
    return {f"dense {names[d]}": model if d == own else copy.deepcopy(model).to(d) for d in dtypes}
