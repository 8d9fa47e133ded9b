"""A loaded model's weights wherever accelerate put them, and pruning that model from its checkpoint on disk.

Loaded with a device map (`--max-memory`), a model's parameters live in one of three places: on a device
(a real tensor), in accelerate's CPU offload (a tensor in the hooks' weights map, moved to the GPU for each
forward) or on disk (a meta parameter whose value the hooks read from a safetensors file for each forward:
at first the checkpoint's own file). `Weights` reads and writes a parameter in any of them; a new value for
a disk-offloaded weight goes to a file in the run's scratch folder (the checkpoint is never written) and the
hooks' index is pointed at it.

`prune_loaded_` gives a loaded model the weights `llmprune prune` would write, whatever is offloaded: each
prunable tensor is read from the checkpoint on disk, pruned by prune's own per-tensor code (magnitude), or
taken from a checkpoint the calibrated engine streams into the scratch folder (Wanda, SparseGPT), and
written over the live weight. One tensor is in flight at a time, and no copy of the model is kept: the
original is always the checkpoint on disk.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .allocation import Allocation
from .config import PruneConfig
from .io import Checkpoint, ReadAhead
from .methods.masks import Threshold
from .skeleton import NameMap


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: the execution device of a dispatched model, else its first real parameter's."""
    hook = getattr(model, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def placement(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters per place: a device name, "cpu-offload" or "disk"."""
    w = Weights(model)
    out: dict[str, int] = {}
    for name, p in w.params.items():
        where = w.where(name)
        key = str(p.device) if where == "device" else where
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def _weights_map(model: nn.Module):
    """The OffloadedWeightsLoader every offloading hook of a dispatched model shares, or None."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            wm = getattr(h, "weights_map", None)
            if wm is not None:
                return getattr(wm, "dataset", wm)  # a PrefixedDataset wraps the shared loader
    return None


class Weights:
    """Read and write a loaded model's parameters by name, wherever they live (see the module docstring)."""

    def __init__(self, model: nn.Module, scratch: Path | None = None):
        self.params = dict(model.named_parameters(remove_duplicate=False))
        loader = _weights_map(model)
        # accelerate's loader, or the plain state dict `accelerate.cpu_offload` hands its hooks
        self.offloaded = {} if loader is None else getattr(loader, "state_dict", loader)
        self.index = getattr(loader, "index", {})
        self.loader = loader
        self.scratch = Path(scratch) if scratch is not None else None

    def where(self, name: str) -> str:
        if not self.params[name].is_meta:
            return "device"
        if name in self.offloaded:
            return "cpu-offload"
        if name in self.index:
            return "disk"
        raise KeyError(f"{name} is on the meta device and in no offload map")

    def read(self, name: str) -> torch.Tensor:
        """The parameter's current value (a CPU tensor for offloaded weights)."""
        where = self.where(name)
        if where == "device":
            return self.params[name].detach()
        return (self.offloaded[name] if where == "cpu-offload" else self.loader[name]).to("cpu")

    @torch.no_grad()
    def write_(self, name: str, value: torch.Tensor) -> None:
        """Give parameter `name` the value `value` (cast to its dtype) where it lives."""
        where = self.where(name)
        if where == "device":
            self.params[name].copy_(value)
        elif where == "cpu-offload":
            self.offloaded[name].copy_(value)
        else:
            from safetensors.torch import save_file

            if self.scratch is None:
                raise ValueError("writing a disk-offloaded weight needs a scratch folder")
            dtype = self.params[name].dtype
            folder = self.scratch / "weights"
            folder.mkdir(parents=True, exist_ok=True)
            path, partial = folder / f"{name}.safetensors", folder / f"{name}.safetensors.partial"
            save_file({name: value.to("cpu", dtype).contiguous()}, str(partial))
            os.replace(partial, path)  # the hooks open the file for every forward: swap it whole
            self.index[name] = {"safetensors_file": str(path), "weight_name": name,
                                "dtype": str(dtype).removeprefix("torch.")}


def param_names(model: nn.Module, ckpt_names) -> dict[str, str]:
    """Checkpoint tensor name -> the model's parameter name (they differ by a prefix for some classes)."""
    name_of = NameMap(model, ckpt_names)
    out: dict[str, str] = {}
    for key, _ in model.named_parameters(remove_duplicate=False):
        ckpt_name = name_of(key)
        if ckpt_name is not None:
            out.setdefault(ckpt_name, key)
    return out


Step = Callable[[str], None]


def prune_loaded_(model: nn.Module, source: Path, cfg: PruneConfig, scratch: Path, *,
                  threshold: Threshold | None = None, calib: torch.Tensor | None = None,
                  outliers: Allocation | None = None, step: Step | None = None) -> dict:
    """Write into the loaded `model` the prunable weights `llmprune prune` makes from the checkpoint at
    `source` with `cfg`; returns prune's sparsity summary (global, by type, by layer; and the allocation
    when it is not uniform).

    `threshold`: a global-magnitude threshold already found for `cfg.sparsity` (a sweep finds every
    level's in one pass); otherwise prune finds it with its own histogram pass. `calib`: the calibration
    batch (default: the one `prune` draws from `cfg`). `outliers`: an earlier OWL allocation of this
    checkpoint whose outlier ratios are reused (see `allocation.reuse`)."""
    from .methods import get_method
    from .prune import magnitude_stream, prunable_names

    ckpt = Checkpoint(source)
    select, names = prunable_names(ckpt, cfg)
    weights = Weights(model, scratch)
    target = param_names(model, ckpt.names)
    if not get_method(cfg.method).calibrated:
        produce, stats, alloc = magnitude_stream(ckpt, select, names, cfg, threshold, outliers)
        for name in names:
            weights.write_(target[name], produce(name))
            if step:
                step(name)
        summary = stats.summary(tensors=False)
        if alloc.kind != "uniform":
            summary["allocation"] = alloc.to_json()
        return summary
    from .streaming import prune_calibrated

    out = Path(scratch) / f"pruned-{uuid.uuid4().hex[:8]}"
    try:
        record = prune_calibrated(str(source), source, ckpt, select, names, out, cfg, step=step, calib=calib,
                                  outliers=outliers)
        pruned = Checkpoint(out)
        read = ReadAhead(pruned, names)
        for name in names:
            weights.write_(target[name], read(name))
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    summary = {k: v for k, v in record["sparsity"].items() if k != "tensors"}
    if record["allocation"].get("allocation", "uniform") != "uniform":
        summary["allocation"] = record["allocation"]
    return summary


def restore_(model: nn.Module, source: Path, names: list[str], scratch: Path) -> None:
    """Write the checkpoint's own values of `names` back into the loaded model (undo a prune)."""
    ckpt = Checkpoint(source)
    weights = Weights(model, scratch)
    target = param_names(model, ckpt.names)
    read = ReadAhead(ckpt, names)
    for name in names:
        weights.write_(target[name], read(name))
