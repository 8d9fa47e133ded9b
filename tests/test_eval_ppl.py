"""Perplexity: chunked-head windows equal a straightforward per-window `labels=` loss on tiny random models."""
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmprune.errors import LlmpruneError
from llmprune.eval.ppl import perplexity, windows

ARCHS = {
    "llama": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2),
    "gemma3_text": dict(model_type="gemma3_text", num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        final_logit_softcapping=0.1),  # capping changes the loss: the head path must apply it
    "opt": dict(model_type="opt", num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64),
    "qwen2": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2),
}


class ByteTokenizer:
    """Bytes as token ids, a BOS of 1: enough for perplexity."""

    def __call__(self, text, return_tensors="pt"):
        ids = [1] + list(text.encode("utf-8"))
        return type("Enc", (), {"input_ids": torch.tensor([ids])})()


def tiny(arch: str, max_positions: int = 64):
    kw = dict(ARCHS[arch])
    model_type = kw.pop("model_type")
    cfg = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               max_position_embeddings=max_positions, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


TEXT = "The quick brown fox jumps over the lazy dog. " * 8


@torch.no_grad()
def reference_ppl(model, text: str, seqlen: int) -> float:
    ids = torch.tensor([[1] + list(text.encode())])[0]
    wins = ids[: len(ids) // seqlen * seqlen].view(-1, seqlen)
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in wins]
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_matches_straightforward_loss(arch):
    model = tiny(arch)
    got = perplexity(model, ByteTokenizer(), TEXT, seqlen=32, batch_size=3, chunk_tokens=7)
    assert got.windows == (len(TEXT) + 1) // 32 and got.tokens == got.windows * 31
    assert got.ppl == pytest.approx(reference_ppl(model, TEXT, 32), rel=1e-4)


def test_softcapping_is_applied():
    model = tiny("gemma3_text")
    capped = perplexity(model, ByteTokenizer(), TEXT, seqlen=32).ppl
    model.config.final_logit_softcapping = None
    assert capped != pytest.approx(perplexity(model, ByteTokenizer(), TEXT, seqlen=32).ppl, rel=1e-2)


def test_seqlen_capped_at_max_positions():
    model = tiny("llama", max_positions=16)
    got = perplexity(model, ByteTokenizer(), TEXT, seqlen=2048)
    assert got.seqlen == 16 and got.ppl == pytest.approx(reference_ppl(model, TEXT, 16), rel=1e-4)


def test_windows_drop_the_tail():
    assert windows(torch.arange(10), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_text_shorter_than_a_window():
    with pytest.raises(LlmpruneError, match="fewer than one window of 64"):
        perplexity(tiny("llama"), ByteTokenizer(), "short", seqlen=64)
