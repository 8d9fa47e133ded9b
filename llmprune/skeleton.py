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
    """Module state-dict key -> checkpoint tensor name (same name, or the checkpoint lacks a leading prefix)."""

    def __init__(self, model: nn.Module, ckpt_names):
        self.names = set(ckpt_names)
        self.prefix = getattr(model, "base_model_prefix", "") or ""

    def __call__(self, key: str) -> str | None:
        if key in self.names:
            return key
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in self.names:
                return ".".join(parts[i:])
        if self.prefix and f"{self.prefix}.{key}" in self.names:
            return f"{self.prefix}.{key}"
        return None


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
                 recurse: bool = True) -> None:
    """Give `module` real tensors on `device`: checkpoint values, or the model's own init for non-persistent buffers.

    A tensor read from the checkpoint becomes the parameter itself (no second copy) when dtype and device match.
    """
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
                value = ckpt.read(name).to(device=device, dtype=t.dtype)
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
