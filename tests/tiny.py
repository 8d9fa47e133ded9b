"""Tiny random-init models of every architecture in the table, built from configs (no network)."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
CONFIGS = {
    "llama": ("LlamaConfig", dict(COMMON, num_key_value_heads=2, max_position_embeddings=256)),
    "mistral": ("MistralConfig", dict(COMMON, num_key_value_heads=2, max_position_embeddings=256)),
    "qwen2": ("Qwen2Config", dict(COMMON, num_key_value_heads=2, max_position_embeddings=256)),
    "gemma": ("GemmaConfig", dict(COMMON, num_key_value_heads=1, head_dim=16, max_position_embeddings=256)),
    "gemma3_text": ("Gemma3TextConfig", dict(COMMON, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                                              sliding_window=32, layer_types=["sliding_attention", "full_attention"])),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
                              word_embed_proj_dim=64, max_position_embeddings=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(COMMON, max_position_embeddings=256)),
    "bert": ("BertConfig", dict(COMMON, max_position_embeddings=256)),
    "vit": ("ViTConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, num_labels=3)),
}
CAUSAL = ["llama", "mistral", "qwen2", "gemma", "gemma3_text", "opt", "gpt_neox"]


def tiny_model(arch: str, seed: int = 0, dtype=torch.float32):
    """A random-init model of `arch` (hidden 64, 2 layers) from the class the architecture table names."""
    from llmprune.models import auto_class

    cls_name, kwargs = CONFIGS[arch]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = auto_class({"model_type": config.model_type}).from_config(config)
    return model.to(dtype).eval()


def save_tiny(arch: str, path: Path, dtype=torch.float32, max_shard_size: str | None = None, seed: int = 0) -> Path:
    """Save a tiny model (and, for text models, a small byte-level tokenizer) as an HF directory."""
    model = tiny_model(arch, seed, dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return Path(path)


def byte_tokenizer():
    """A real fast tokenizer with a 256-symbol byte-level vocabulary (matches the tiny models' vocab_size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[10], pad_token=alphabet[0])


def save_tiny_lm(arch: str, path: Path, **kwargs) -> Path:
    """`save_tiny` plus the byte-level tokenizer, for commands that tokenize (calibration, evaluation)."""
    save_tiny(arch, path, **kwargs)
    byte_tokenizer().save_pretrained(path)
    return Path(path)
