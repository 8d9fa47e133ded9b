"""The layer-by-layer engine for calibrated methods (Wanda, SparseGPT): one decoder layer resident at a time.

The model is built as a meta-device skeleton (no memory). The calibration batch is run once through the
skeleton with pass-through stand-ins for every decoder layer (modules outside the layer list, such as
embeddings and rotary tables, are loaded lazily when first called): each stand-in records the arguments
the model's own loop gives its layer (masks, position ids, `position_embeddings`), which differ by layer
in Gemma2/3 and sliding-window Qwen, so no per-model code is needed and no layer is assumed alike. Then,
for each decoder layer: load its weights, prune its linears group by group, each on the inputs the pruned
groups before it give, with every linear computed once (sequential.py, the default), or from statistics all
taken from the unpruned layer and a rerun of the pruned one (`sequential=False`, as the Wanda and SparseGPT
reference drivers do); either way the layer's outputs replace its inputs in place (one activation buffer)
as the next layer's inputs, and the layer is freed. `streaming.py` drives this over a checkpoint on disk (saving each
layer, resuming, assembling the output); `prune_model_calibrated_` here does it to a model in memory.
Methods come from the registry (llmprune.methods): the engine reads which statistic each needs and calls its
`prune(weight, stats, spec)`. With `allocation="owl"` a first streamed pass over the dense layers scores
every layer's outliers (`dense_outlier_ratios`) before the pruning pass gives each layer its own sparsity.
"""
from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn

from .allocation import SCORED_ON_ACTIVATIONS, Allocation, owl_allocation, reuse
from .arch import arch_for
from .config import PruneConfig
from .errors import LlmpruneError
from .methods import STATISTICS, get_method
from .methods.owl import outlier_ratio, outlier_score
from .profile import Phases

log = logging.getLogger(__name__)

TOKENS_PER_FORWARD = 1024  # calibration samples go through a layer in chunks of about this many tokens (activations
# of a chunk stay in cache: 5-10% faster than 4096 on SmolLM2, `examples/bench_calibrated.py`)


class _StatsDone(Exception):
    """Raised by the statistics hook of a layer's last linear: the rest of that forward is not needed."""


class _StopForward(Exception):
    """Raised by the stand-in of the last decoder layer once every layer's inputs are captured."""


def resolve_device(device: str | None) -> torch.device:
    """'auto' (default) -> cuda when available, else cpu."""
    device = device or "auto"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise LlmpruneError(f"Unknown device '{device}'. Available: auto, cpu, cuda (or cuda:N).")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LlmpruneError("--device cuda was given but no CUDA device is available; use --device cpu or auto.")
    return torch.device(device)


def find_layers(model: nn.Module, spec) -> tuple[str, nn.ModuleList]:
    """(module path, module list) of the decoder layers named by the architecture table row."""
    paths = (spec.layers,) if isinstance(spec.layers, str) else tuple(spec.layers)
    for path in paths:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.ModuleList) and (name == path or name.endswith("." + path)):
                return name, mod
    raise LlmpruneError(f"No decoder layer list {' or '.join(paths)} in {type(model).__name__}.")


def run_layer(layer: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """A decoder layer's hidden-state output: transformers 5 returns a tensor, older versions a tuple."""
    out = layer(x, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def chunks(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def model_inputs(batch: torch.Tensor) -> dict:
    """The forward keyword for a calibration batch: token ids (n, seqlen), or images (n, 3, h, w) for vision models."""
    return {"input_ids": batch} if not batch.is_floating_point() else {"pixel_values": batch}


def _in_memory(shape, dtype, name: str | None = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class LayerInputs:
    """Every decoder layer's inputs for every calibration sample.

    hidden: (n, seqlen, hidden) on the CPU (or on the GPU where it fits): the current layer's input hidden states, overwritten in place by
    each layer's outputs. extra: {chunk batch size: [(positional args after the hidden states, keyword args)
    for each layer]} on the device. Layers differ (sliding-window vs full attention masks, local vs global
    rotary tables in Gemma2/3, Qwen's sliding layers), so each keeps the arguments the model itself gave it.
    """

    def __init__(self, hidden: torch.Tensor | None, extra: dict[int, list[tuple[tuple, dict]]], batch_size: int,
                 place=None):
        self.hidden, self.extra, self.batch_size = hidden, extra, batch_size
        self.place = place or _in_memory  # place(shape, dtype, name): where other per-sample buffers go
        self.buffers: dict[str, torch.Tensor] = {}
        self.plans: dict = {}  # what the sequential engine found of each kind of layer (sequential.plan)

    def buffer(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A per-sample scratch buffer, reused by every layer that asks for the same name, shape and dtype: its
        pages are faulted in once per run, not once per layer."""
        t = self.buffers.get(name)
        if t is None or t.shape != shape or t.dtype != dtype:
            self.buffers.pop(name, None)
            t = self.buffers[name] = self.place(shape, dtype, name)
        return t

    def iter_chunks(self, device, layer: int):
        for sl in chunks(self.hidden.shape[0], self.batch_size):
            args, kwargs = self.extra[sl.stop - sl.start][layer]
            yield sl, self.hidden[sl].to(device), args, kwargs


class _StandIns:
    """Pass-through stand-ins for every decoder layer: each records its arguments and returns its hidden
    states unchanged, the last one stops the forward. So one forward of the model gives each layer the very
    arguments the model's own loop computes for it, without running (or even loading) any layer.

    Whether the model's loop expects a tensor (transformers 5) or a tuple back is found out by trying: a
    wrong guess shows up as a later layer receiving something other than the first layer's hidden states.
    """

    def __init__(self, layers: nn.ModuleList):
        self.layers, self.calls, self.as_tuple = layers, [], False

    def __enter__(self):
        self.saved = [layer.__dict__.get("forward") for layer in self.layers]  # accelerate may have wrapped it
        for i, layer in enumerate(self.layers):
            layer.forward = self._stand_in(i)
        return self

    def __exit__(self, *exc):
        for layer, saved in zip(self.layers, self.saved):
            del layer.forward
            if saved is not None:
                layer.forward = saved

    def _stand_in(self, i: int):
        def forward(*args, **kwargs):
            self.calls.append((i, args, kwargs))
            if i == len(self.layers) - 1:
                raise _StopForward
            x = args[0] if args else kwargs["hidden_states"]
            return (x,) if self.as_tuple else x
        return forward

    def run(self, model: nn.Module, inputs: dict) -> list[tuple[torch.Tensor, tuple, dict]]:
        """[(hidden states, other positional args, keyword args)] of every layer for one forward of `inputs`."""
        error = None
        for as_tuple in (False, True):
            self.calls, self.as_tuple = [], as_tuple
            try:
                model(**inputs, use_cache=False)
            except _StopForward:
                pass
            except (TypeError, AttributeError, IndexError, RuntimeError) as e:
                if "meta" in str(e):
                    raise
                log.debug("stand-ins returning %s failed: %s", "tuples" if as_tuple else "tensors", e)
                error = e
                continue
            calls = []
            for i, args, kwargs in self.calls:
                kwargs = dict(kwargs)
                x, args = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
                calls.append((x, args, kwargs))
            if len(calls) == len(self.layers) and all(
                    isinstance(x, torch.Tensor) and x.shape == calls[0][0].shape for x, _, _ in calls):
                return calls
        raise LlmpruneError(f"Could not capture the decoder layer inputs of {type(model).__name__}: its forward "
                            f"did not call its {len(self.layers)} layers in order with the same hidden states."
                            ) from error


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: nn.ModuleList, batch: torch.Tensor, batch_size: int,
                   device: torch.device, place=None) -> LayerInputs:
    """Run `batch` (n, seqlen) token ids (or (n, 3, h, w) images) through the model with stand-ins for the
    decoder layers, and capture the first layer's hidden states and every layer's own other arguments.

    `place(shape, dtype, name=None)` allocates the buffer of the hidden states (default: in CPU memory), and
    later the sequential engine's kept inputs (`name` "kept").
    """
    place = place or _in_memory
    hidden, extra = None, {}
    with _StandIns(layers) as stand_ins:
        for sl in chunks(batch.shape[0], batch_size):
            calls = stand_ins.run(model, model_inputs(batch[sl].to(device)))
            x = calls[0][0]
            if hidden is None:
                hidden = place((batch.shape[0], *x.shape[1:]), x.dtype)  # (n, seqlen, hidden)
            hidden[sl] = x.to(hidden.device)
            extra.setdefault(sl.stop - sl.start, [(args, kwargs) for _, args, kwargs in calls])
    return LayerInputs(hidden, extra, batch_size, place)


@torch.no_grad()
def collect_stats(layer: nn.Module, index: int, linears: dict[str, nn.Linear], inputs: LayerInputs, stats_kind: str,
                  device: torch.device) -> dict[str, object]:
    """Statistics (`stats_kind`: "act_norms", "hessian") of every linear's inputs over all calibration samples,
    from one pass of the layer.

    Linears fed the very same input tensor (q/k/v, gate/up) share one statistics object. Each chunk's forward
    stops as soon as every linear has seen its input: what follows the last one (down_proj's matmul, the
    residual) feeds nothing the statistics need, and the rerun computes the layer's outputs anyway.
    """
    stat_cls = STATISTICS[stats_kind]
    stats: dict[str, object] = {}
    shared: dict[str, str] = {}
    this_chunk: list[tuple[torch.Tensor, str]] = []
    seen: set[str] = set()
    first = [True]

    def hook_for(leaf):
        def hook(module, args):
            seen.add(leaf)
            x = args[0]
            if leaf not in shared:
                if first[0]:
                    for t, other in this_chunk:
                        if t is x:
                            shared[leaf] = other
                            break
                    else:
                        this_chunk.append((x, leaf))
                        stats[leaf] = stat_cls(x.shape[-1], device)
                if leaf not in shared:
                    stats[leaf].add_(x)
            if len(seen) == len(linears):
                raise _StatsDone
        return hook

    handles = [mod.register_forward_pre_hook(hook_for(leaf)) for leaf, mod in linears.items()]
    try:
        for _, x, args, kwargs in inputs.iter_chunks(device, index):
            try:
                run_layer(layer, x, args, kwargs)
            except _StatsDone:
                pass
            first[0] = False
            this_chunk.clear()
            seen.clear()
    finally:
        for h in handles:
            h.remove()
    return {leaf: stats[shared.get(leaf, leaf)] for leaf in linears}


@torch.no_grad()
def prune_layer_(layer: nn.Module, index: int, linears: dict[str, nn.Linear], names: dict[str, str],
                 inputs: LayerInputs, cfg: PruneConfig, device: torch.device, step=None, phases=None,
                 sparsity: float | None = None, rerun: bool = True) -> None:
    """Prune the given linears of resident layer `index` (to `sparsity`, default the run's target), then
    replace `inputs.hidden` by the layer's outputs (`rerun`; the last layer's outputs feed nothing).

    `cfg.sequential`: group by group on the inputs the pruned groups give (sequential.py, about one layer
    forward); otherwise every statistic from the unpruned layer, then a rerun (the reference drivers' order)."""
    from .sequential import prune_sequential_

    phases = phases or Phases()
    method = get_method(cfg.method)

    def solve(group: list[str], stats) -> None:
        solve_group_(method, [linears[leaf].weight.data for leaf in group], stats,
                     [cfg.layer_spec(sparsity, names[leaf]) for leaf in group])
        for leaf in group:
            if step:
                step(names[leaf])

    if cfg.sequential and prune_sequential_(layer, index, linears, inputs, method.stats, solve, run_layer, device,
                                            phases, rerun):
        return
    with phases("statistics"):
        stats = collect_stats(layer, index, linears, inputs, method.stats, device)
    with phases("solve"):
        groups: dict[int, list[str]] = {}  # linears sharing one statistics object (q/k/v, gate/up)
        for leaf in linears:
            groups.setdefault(id(stats[leaf]), []).append(leaf)
        for group in groups.values():
            shared = stats[group[0]]
            for leaf in group:
                del stats[leaf]
            solve(group, shared)
            del shared  # (the Hessian of a 7B MLP is 0.5 GB: not kept through the rerun)
    del stats
    if rerun:
        with phases("rerun"):
            forward_layer_(layer, index, inputs, device)


def solve_group_(method, weights: list[torch.Tensor], stats, specs) -> None:
    """Prune `weights` (each (out, in), read from one input) in place with `method` and their shared statistics."""
    if len(weights) > 1 and method.prune_shared:
        new = method.prune_shared(weights, stats, specs)
    else:
        new = [method.prune(w, stats, spec) for w, spec in zip(weights, specs)]
    for w, weight in zip(weights, new):
        w.copy_(weight)


@torch.no_grad()
def forward_layer_(layer: nn.Module, index: int, inputs: LayerInputs, device: torch.device) -> None:
    """Replace `inputs.hidden` by resident layer `index`'s outputs: the next layer's inputs."""
    for sl, x, args, kwargs in inputs.iter_chunks(device, index):
        inputs.hidden[sl] = run_layer(layer, x, args, kwargs).to(inputs.hidden.device, inputs.hidden.dtype)


def batch_size_for(seqlen: int, cfg: PruneConfig) -> int:
    return int(cfg.extra.get("batch_size") or max(1, TOKENS_PER_FORWARD // seqlen))


def check_method(cfg: PruneConfig) -> None:
    method = get_method(cfg.method)
    if not method.calibrated:
        raise LlmpruneError(f"The layer-by-layer engine runs calibrated methods only, not the data-free '{cfg.method}'.")
    if cfg.scope not in method.scopes and cfg.pattern is None:
        raise LlmpruneError(f"{cfg.method} compares scores within a layer: use --scope {' or '.join(method.scopes)}, "
                            f"not {cfg.scope}.")


@torch.no_grad()
def dense_outlier_ratios(layers: nn.ModuleList, inputs: LayerInputs, linears_of, cfg: PruneConfig,
                         device: torch.device, load=None, unload=None) -> Allocation:
    """OWL for a calibrated method: a first pass over the unpruned layers, one resident at a time (`load(i,
    layer)` / `unload(layer)` bring it in and out), collecting each linear's input norms to score |W| * ||X||,
    then running the dense layer to give the next one its inputs (overwrites `inputs.hidden`)."""
    ratios, params = {}, {}
    for i, layer in enumerate(layers):
        if load:
            load(i, layer)
        linears = linears_of(i, layer)
        stats = collect_stats(layer, i, linears, inputs, "act_norms", device)
        ratios[i] = outlier_ratio(partial(_iter_scores, linears, stats), cfg.owl_m)
        params[i] = sum(m.weight.numel() for m in linears.values())
        del stats, linears
        if i < len(layers) - 1:
            forward_layer_(layer, i, inputs, device)
        if unload:
            unload(layer)
    return owl_allocation(cfg, ratios, params, SCORED_ON_ACTIVATIONS)


def selected_linears(layer: nn.Module, prefix: str, is_target) -> dict[str, nn.Linear]:
    """{leaf path: module} of the layer's nn.Linear modules whose weight name `prefix.leaf.weight` is selected."""
    return {leaf: mod for leaf, mod in layer.named_modules()
            if isinstance(mod, nn.Linear) and is_target(f"{prefix}.{leaf}.weight", tuple(mod.weight.shape))}


# --------------------------------------------------------------------------------------------------------
# In memory: a loaded model pruned in place (eval --sparsity, fine-tuning, the reference for streaming).

def prune_model_calibrated_(model: nn.Module, select, cfg: PruneConfig, calib: torch.Tensor | None,
                            step=None, outliers: Allocation | None = None) -> dict:
    """Prune a loaded model in place with Wanda/SparseGPT on `calib` (n, seqlen); returns the sparsity summary.

    `outliers`: an earlier OWL allocation of this dense model whose outlier ratios are reused (no first pass)."""
    from .report import SparsityStats

    check_method(cfg)
    if calib is None:
        raise LlmpruneError(f"{cfg.method} needs calibration samples (see llmprune.calib.calibration_batch).")
    device = next(model.parameters()).device
    path, layers = find_layers(model, arch_for(model.config))
    batch_size = batch_size_for(calib.shape[1], cfg)
    alloc = reuse(outliers, cfg) or Allocation()
    if cfg.allocation == "owl" and alloc.kind == "uniform":
        alloc = dense_outlier_ratios(layers, capture_inputs(model, layers, calib, batch_size, device),
                                     lambda i, layer: selected_linears(layer, f"{path}.{i}", select), cfg, device)
    inputs = capture_inputs(model, layers, calib, batch_size, device)
    summary = SparsityStats()
    for i, layer in enumerate(layers):
        prefix = f"{path}.{i}"
        linears = selected_linears(layer, prefix, select)
        names = {leaf: f"{prefix}.{leaf}.weight" for leaf in linears}
        before = {leaf: int((m.weight == 0).sum()) for leaf, m in linears.items()}
        prune_layer_(layer, i, linears, names, inputs, cfg, device, step, sparsity=alloc.sparsity(i),
                     rerun=i < len(layers) - 1)
        for leaf, m in linears.items():
            summary.add(names[leaf], m.weight.data, *select.describe(names[leaf]), zeros_before=before[leaf])
    out = summary.summary(tensors=False)
    if alloc.kind != "uniform":
        out["allocation"] = alloc.to_json()
    return out


def _iter_scores(linears: dict[str, nn.Linear], stats: dict):
    return (outlier_score(m.weight, stats[leaf].sum_sq) for leaf, m in linears.items())
