"""The architecture table: where each model family keeps its decoder layers and what its linears are.

Model differences are data, not code: one row per family says where the decoder (or encoder) layer list
lives and which module names are attention or MLP projections. Everything else (streaming prune, inspect,
the calibration engine, fine-tuning) reads this table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LlmpruneError

_LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
_BERT_ATTN = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
_BERT_MLP = ("intermediate.dense", "output.dense")


@dataclass(frozen=True)
class ArchSpec:
    """One model family: `layers` are the module paths of the layer list (any prefix allowed; several
    when transformers names modules differently in memory and in saved checkpoints)."""

    family: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    auto_class: str = "AutoModelForCausalLM"

    def layer_pattern(self) -> re.Pattern:
        # "<prefix.>model.layers.<i>.<leaf>.weight"
        paths = "|".join(re.escape(p) for p in self.layers)
        return re.compile(rf"^(?:.*\.)?(?:{paths})\.(\d+)\.(.+)\.weight$")

    def locate(self, name: str) -> tuple[int, str] | None:
        """(layer index, leaf module path) of a weight inside the layer list, else None."""
        m = self.layer_pattern().match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    def module_type(self, leaf: str) -> str:
        """'attn.q_proj', 'mlp.down_proj', or 'other.<leaf>' for a leaf module path inside a layer."""
        for group, names in (("attn", self.attention), ("mlp", self.mlp)):
            for n in names:
                if leaf == n or leaf.endswith("." + n):
                    return f"{group}.{n}"
        return f"other.{leaf}"


ARCHS: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                       "phi3", "olmo", "olmo2", "granite", "smollm3"),
             ("model.layers",), _LLAMA_ATTN, _LLAMA_MLP),
    ArchSpec("gemma3", ("gemma3",), ("language_model.layers", "language_model.model.layers"),  # memory, saved
             _LLAMA_ATTN, _LLAMA_MLP,
             auto_class="AutoModelForImageTextToText"),
    ArchSpec("opt", ("opt",), ("decoder.layers",), ("q_proj", "k_proj", "v_proj", "out_proj"), ("fc1", "fc2")),
    ArchSpec("gpt_neox", ("gpt_neox",), ("gpt_neox.layers",), ("attention.query_key_value", "attention.dense"),
             ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    ArchSpec("bert", ("bert", "roberta"), ("encoder.layer",), _BERT_ATTN, _BERT_MLP, auto_class="AutoModelForMaskedLM"),
    ArchSpec("vit", ("vit", "dinov2"), ("encoder.layer", "layers"),  # saved names, then transformers 5 module names
             ("attention.attention.query", "attention.attention.key", "attention.attention.value",
              "attention.output.dense") + tuple(f"attention.{p}" for p in _LLAMA_ATTN),
             _BERT_MLP + ("mlp.fc1", "mlp.fc2"), auto_class="AutoModelForImageClassification"),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ARCHS for t in a.model_types)


def arch_for(config) -> ArchSpec:
    """The table row for a config (dict from config.json or a transformers PretrainedConfig)."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for spec in ARCHS:
        if model_type in spec.model_types:
            return spec
    auto_map = config.get("auto_map") if isinstance(config, dict) else getattr(config, "auto_map", None)
    if auto_map:  # its modelling code ships with the checkpoint (trust_remote_code)
        code = (next((v for k, v in auto_map.items() if k.startswith("AutoModel")), next(iter(auto_map.values())))
                if isinstance(auto_map, dict) else auto_map)
        raise LlmpruneError(
            f"Architecture '{model_type}' needs the checkpoint's own code ({code}), and llmprune never runs remote "
            f"code. Supported model types: {', '.join(supported_model_types())}")
    raise LlmpruneError(
        f"Unsupported architecture '{model_type}'. Supported model types: {', '.join(supported_model_types())}"
    )


@dataclass(frozen=True)
class Selector:
    """Which weights are prunable: 2-D weights of the layer list (no norms or embeddings), then regexes."""

    spec: ArchSpec
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        for rx in (*self.include, *self.exclude):
            try:
                re.compile(rx)
            except re.error as e:
                raise LlmpruneError(f"Invalid regex '{rx}' for --include/--exclude: {e}") from None

    def __call__(self, name: str, shape) -> bool:
        if len(shape) != 2 or not name.endswith(".weight"):
            return False
        if self.include:
            chosen = any(re.search(rx, name) for rx in self.include)
        else:
            where = self.spec.locate(name)
            chosen = where is not None and not re.search(r"norm|embed", where[1], re.I)
        return chosen and not any(re.search(rx, name) for rx in self.exclude)

    def describe(self, name: str) -> tuple[int | None, str]:
        """(layer index or None, module type) of a weight, for reports."""
        where = self.spec.locate(name)
        if where is None:
            return None, name.rsplit(".", 2)[-2] if "." in name else name
        return where[0], self.spec.module_type(where[1])
