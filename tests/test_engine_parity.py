"""The calibrated engine against a plain sequential reference, on every architecture of the table.

The reference is written here, independent of the engine's capture: for each decoder layer i it runs the
real model's own forward (layers < i already pruned) with hooks on layer i's linears, so layer i's
statistics come from its unpruned inputs exactly as the model computes them: its own attention mask
(sliding or full), its own rotary table (Gemma2/3 local vs global), whatever the layer type. The engine's
masks, streamed from a checkpoint and in memory, must equal the reference's; SparseGPT's weights agree to
fp32 tolerance. Replaying layer 0's arguments for every layer fails this on Gemma2/3 and sliding Qwen.
"""
from __future__ import annotations

import pytest
import torch
import transformers

from llmprune.arch import Selector, arch_for
from llmprune.config import NMPattern, PruneConfig
from llmprune.engine import find_layers, model_inputs, prune_model_calibrated_
from llmprune.streaming import prune_calibrated
from llmprune.io import Checkpoint
from llmprune.methods.sparsegpt import HessianStats, sparsegpt_prune
from llmprune.methods.wanda import ActNormStats, wanda_prune
from llmprune.models import auto_class
from llmprune.skeleton import NameMap

SEQLEN, WINDOW, BATCH = 32, 8, 4  # windows shorter than the samples, so sliding layers see other masks
LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          vocab_size=256, max_position_embeddings=128)
ALTERNATING = ["sliding_attention", "full_attention"]  # layer 1 differs from layer 0
CONFIGS = {
    "llama": ("LlamaConfig", dict(LM)),
    "mistral": ("MistralConfig", dict(LM, sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", dict(LM, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": ("Qwen3Config", dict(LM, head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                                  max_window_layers=1)),
    "gemma": ("GemmaConfig", dict(LM, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(LM, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING)),
    "gemma3_text": ("Gemma3TextConfig", dict(LM, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING,
                                             rope_local_base_freq=100.0)),
    "gemma3": ("Gemma3Config", dict(  # the multimodal model: only its language model's layers are pruned
        text_config=dict(LM, vocab_size=300, head_dim=16, sliding_window=WINDOW, layer_types=ALTERNATING),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=16, boi_token_index=297, eoi_token_index=298, image_token_index=299)),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=256, word_embed_proj_dim=64, max_position_embeddings=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, vocab_size=256, max_position_embeddings=128)),
    "bert": ("BertConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=256, max_position_embeddings=128)),
    "vit": ("ViTConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, num_labels=3)),
}


def tiny(arch: str) -> torch.nn.Module:
    cls_name, kwargs = CONFIGS[arch]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(0)
    model = auto_class({"model_type": config.model_type}).from_config(config).float().eval()
    with torch.no_grad():  # spread the input-channel scales so activation-aware methods disagree with magnitude
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(torch.randn(p.shape[1]) * 0.5))
    return model


def calib_batch(arch: str, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if arch == "vit":
        return torch.randn(n, 3, 32, 32, generator=g)  # (n, 3, h, w)
    return torch.randint(0, 256, (n, SEQLEN), generator=g)  # (n, seqlen)


@torch.no_grad()
def sequential_reference_(model: torch.nn.Module, cfg: PruneConfig, batch: torch.Tensor) -> None:
    """Prune layer by layer, each from the statistics of full forwards of the real (partly pruned) model: one
    forward for all of a layer's linears (`cfg.sequential` False, the reference drivers' order), or one per
    linear in the order the layer calls them, each on the inputs the linears pruned before it give
    (`cfg.sequential`, GPTQ's true-sequential order, at its plainest)."""
    select = Selector(arch_for(model.config))
    path, layers = find_layers(model, arch_for(model.config))
    for i, layer in enumerate(layers):
        lins = {n: m for n, m in layer.named_modules()
                if isinstance(m, torch.nn.Linear) and select(f"{path}.{i}.{n}.weight", tuple(m.weight.shape))}
        if cfg.sequential:
            order = []
            hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n)) for n, m in lins.items()]
            model(**model_inputs(batch[:1]))
            for h in hooks:
                h.remove()
            rounds = [[n] for n in dict.fromkeys(order)]
        else:
            rounds = [list(lins)]
        for names in rounds:
            stats = {n: (ActNormStats if cfg.method == "wanda" else HessianStats)(lins[n].in_features) for n in names}
            hooks = [lins[n].register_forward_pre_hook(lambda mod, a, n=n: stats[n].add_(a[0])) for n in names]
            for chunk in batch.split(BATCH):
                model(**model_inputs(chunk))
            for h in hooks:
                h.remove()
            for n in names:
                m = lins[n]
                if cfg.method == "wanda":
                    m.weight.copy_(wanda_prune(m.weight, stats[n].sum_sq, cfg.sparsity, cfg.scope, cfg.pattern))
                else:
                    m.weight.copy_(sparsegpt_prune(m.weight, stats[n].H, cfg.sparsity, cfg.pattern, scope=cfg.scope))


CASES = [("wanda", None), ("sparsegpt", None), ("sparsegpt", NMPattern(2, 4))]


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("method,pattern", CASES, ids=["wanda", "sparsegpt", "sparsegpt-2:4"])
@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "unpruned-stats"])
def test_engine_equals_sequential_reference(tmp_path, arch, method, pattern, sequential):
    cfg = PruneConfig(method=method, sparsity=0.5, pattern=pattern, sequential=sequential, extra={"batch_size": BATCH})
    batch = calib_batch(arch)
    reference = tiny(arch)
    src = tmp_path / "src"
    reference.save_pretrained(src, max_shard_size="200KB")
    sequential_reference_(reference, cfg, batch)
    expected = reference.state_dict()

    in_memory = tiny(arch)
    prune_model_calibrated_(in_memory, Selector(arch_for(in_memory.config)), cfg, batch)

    ckpt = Checkpoint(src)
    select = Selector(arch_for(ckpt.config))
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    prune_calibrated("tiny", src, ckpt, select, names, tmp_path / "out", cfg, calib=batch)
    streamed = Checkpoint(tmp_path / "out")

    got = in_memory.state_dict()
    name_of = NameMap(reference, ckpt.names)
    key_of = {name_of(key): key for key in expected}  # checkpoint name -> state-dict key (ViT renames on load)
    assert len(names) >= 2 * 4
    for name in names:
        key = key_of[name]
        ref = expected[key]
        for label, w in (("in memory", got[key]), ("streamed", streamed.read(name))):
            assert torch.equal(w != 0, ref != 0), f"{arch} {label}: {name} mask differs from the reference"
            assert torch.allclose(w, ref, atol=1e-5, rtol=1e-4), f"{arch} {label}: {name} weights differ"
