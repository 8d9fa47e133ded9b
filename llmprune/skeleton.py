"""The meta-device model skeleton: built without memory, given real tensors module by module, and freed again.

The streaming engine keeps one decoder layer resident: `materialise_` loads a module's tensors from the
checkpoint (or computes non-persistent buffers such as rotary tables with the model's own init), and
`free_` sends them back to the meta device.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .arch import arch_for
from .errors import LlmpruneError


class NameMap:
    """Module state-dict key -> checkpoint tensor name: the same name, the name without or with the model's
    prefix, or the name transformers renames on loading (transformers 5 maps e.g. ViT's saved
    `encoder.layer.0.attention.attention.query` to the module `layers.0.attention.q_proj`)."""

    def __init__(self, model: nn.Module, ckpt_names):
        self.names = set(ckpt_names)
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self.renamed = {}
        for renaming in _load_renamings(model):
            for name in self.names:
                new, _ = renaming.rename_source_key(self.renamed.get(name, name))
                if new != name:
                    self.renamed[name] = new
        self.renamed = {new: name for name, new in self.renamed.items()}  # module key -> checkpoint name

    def _lookup(self, key: str) -> str | None:
        return key if key in self.names else self.renamed.get(key)

    def __call__(self, key: str) -> str | None:
        parts = key.split(".")
        candidates = [".".join(parts[i:]) for i in range(len(parts))]
        if self.prefix:
            candidates.append(f"{self.prefix}.{key}")
        for candidate in candidates:
            name = self._lookup(candidate)
            if name is not None:
                return name
        return None


def _load_renamings(model: nn.Module) -> list:
    """The key renamings transformers applies when loading this model (none with transformers 4)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]


def build_skeleton(src: Path, config: dict, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on the meta device (no memory), in evaluation mode."""
    import transformers

    cls = getattr(transformers, arch_for(config).auto_class)
    hf_config = transformers.AutoConfig.from_pretrained(src)
    with torch.device("meta"):
        model = cls.from_config(hf_config, dtype=dtype)
    return model.eval()


@torch.no_grad()
def materialise_(module: nn.Module, prefix: str, ckpt, name_of: NameMap, root: nn.Module, device,
                 recurse: bool = True, mapped: bool = False) -> None:
    """Give `module` real tensors on `device`: checkpoint values, or the model's own init for non-persistent buffers.

    A tensor read from the checkpoint becomes the parameter itself (no second copy) when dtype and device match.
    `mapped`: read-only use where a computation touches a small part of a tensor (an embedding's rows): the
    checkpoint's `read_mapped` where it has one, so only the touched pages become resident.
    """
    read = getattr(ckpt, "read_mapped", ckpt.read) if mapped else ckpt.read
    for sub_name, sub in (module.named_modules() if recurse else [("", module)]):
        transient = [k for k, t in sub._buffers.items() if t is not None and k in sub._non_persistent_buffers_set]
        for key in transient:
            sub._buffers[key] = torch.empty_like(sub._buffers[key], device=device)
        if transient:
            root._init_weights(sub)  # e.g. rotary inv_freq: computed from the config, never saved
        for table in (sub._parameters, sub._buffers):
            for key, t in list(table.items()):
                if t is None or key in transient:
                    continue
                full = ".".join(p for p in (prefix, sub_name, key) if p)
                name = name_of(full)
                if name is None:
                    raise LlmpruneError(f"The checkpoint has no tensor for '{full}' of {type(root).__name__}.")
                value = read(name).to(device=device, dtype=t.dtype)
                if value.shape != t.shape:
                    raise LlmpruneError(f"'{name}' has shape {tuple(value.shape)} in the checkpoint but the model "
                                        f"expects {tuple(t.shape)}.")
                table[key] = nn.Parameter(value, requires_grad=False) if table is sub._parameters else value


def free_(module: nn.Module, recurse: bool = True) -> None:
    """Back to the meta device: the memory of `module`'s tensors is released."""
    for sub in (module.modules() if recurse else [module]):
        for table in (sub._parameters, sub._buffers):
            for key, t in list(table.items()):
                if t is not None and not t.is_meta:
                    meta = torch.empty_like(t, device="meta")
                    table[key] = nn.Parameter(meta, requires_grad=False) if table is sub._parameters else meta
