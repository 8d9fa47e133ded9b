"""Sequential pruning within a decoder layer: each group of linears is pruned on the inputs that the pruned
groups before it give it, and every linear is computed once.

`plan` runs one calibration chunk through the unpruned layer with hooks and finds, with nothing
model-specific: the linears in the order they are called; which of them read the very same input tensor
(q/k/v, gate/up: one group, one statistic); and for a linear L, the outermost submodule whose output *is*
L's output tensor (self_attn for o_proj, mlp for down_proj), its replay parent. Then, group by group, every
chunk runs through the layer up to the group's first linear, whose input goes into the group's statistics
(and is kept when a linear of the group has a replay parent), and the group is pruned. A replay parent whose
linear is pruned is not run again: it returns L applied to the kept input, computed on its first use and
kept as L's output from then on. A last pass with every parent replayed gives the layer's outputs. They
equal, bit for bit, a forward of the fully pruned layer, because a group's input depends only on the groups
called before it (so a resumed run's replay of finished layers gives the same activations).

Work: about one layer forward in all (q/k/v and attention once, o_proj once, gate/up once, down_proj once),
where statistics from the unpruned layer and a rerun of the pruned one (the reference drivers) take two.
Memory: the kept inputs of replayed linears, placed like the activations (`LayerInputs.place`): for a
LLaMA layer the attention output and down_proj's input, (n, seqlen, hidden + intermediate).
This is the "true sequential" order of GPTQ (Frantar et al., 2023); Wanda and SparseGPT's own drivers take
every statistic from the unpruned layer (`PruneConfig.sequential=False`, engine.collect_stats).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .methods import STATISTICS

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the statistics hook of the group being collected: the rest of that forward is not needed."""


@dataclass
class _Kept:
    """A replayed linear's input over all calibration samples, turned into its output on first replay."""

    name: str  # of its buffers in the pool (`LayerInputs.buffer`)
    linear: nn.Linear
    parent: nn.Module
    returns_tuple: int  # 0: the parent returns L's output; k: a k-tuple (L's output, None, ...)
    buf: torch.Tensor | None = None  # (n, ..., in_features): L's inputs, then (n, ..., out_features): its outputs
    out: torch.Tensor | None = None  # L's outputs while they cannot overwrite `buf` (other width or dtype)
    rows: int = 0  # samples whose output is computed
    ready: bool = False  # the group is pruned: the parent replays

    @property
    def is_output(self) -> bool:
        return self.ready and self.rows == self.buf.shape[0]

    def output(self, sl: slice, device, buffer, keep: bool = True) -> torch.Tensor:
        """L's output for chunk `sl`; computed once, and kept for later passes (`keep`: a pass follows)."""
        if self.is_output:
            return self.buf[sl].to(device)
        y = self.linear(self.buf[sl].to(device))
        if not keep:
            return y
        if self.out is None and (y.shape[-1] != self.buf.shape[-1] or y.dtype != self.buf.dtype):
            self.out = buffer(f"{self.name}-out", (self.buf.shape[0], *y.shape[1:]), y.dtype)
        (self.buf if self.out is None else self.out)[sl] = y  # in place: this chunk's input is not read again
        self.rows += sl.stop - sl.start
        if self.rows == self.buf.shape[0] and self.out is not None:
            self.buf, self.out, self.name = self.out, None, f"{self.name}-out"
        return y

    def result(self, y: torch.Tensor):
        return (y, *([None] * (self.returns_tuple - 1))) if self.returns_tuple else y


@dataclass
class Plan:
    groups: list[list[str]]  # leaves in call order, grouped by the input tensor they share
    parents: dict[str, tuple[str, int]] = field(default_factory=dict)  # leaf -> (replay parent's path, tuple length)


def signature(layer: nn.Module, linears: dict) -> tuple:
    """Layers alike in this (class, module tree, linears pruned) run the same forward code: one plan serves them."""
    return type(layer).__qualname__, tuple((n, type(m).__name__) for n, m in layer.named_modules()), tuple(linears)


def _returns(out, y: torch.Tensor) -> int | None:
    """How a module returning `out` returns the tensor `y`: 0 as itself, k as (y, None, ...) of length k."""
    if out is y:
        return 0
    if type(out) is tuple and out and out[0] is y and all(o is None for o in out[1:]):
        return len(out)
    return None


@torch.no_grad()
def plan(layer: nn.Module, linears: dict[str, nn.Linear], run, x, args, kwargs) -> Plan | None:
    """The groups and replay parents of `layer`, from one forward (`run(layer, x, args, kwargs)`) of a chunk;
    None when a linear is not called exactly once (its input would not be one tensor per forward)."""
    calls, order, seen_inputs, module_out = {}, [], [], {}
    group_of: dict[str, str] = {}
    modules = {name: mod for name, mod in layer.named_modules() if name}
    ancestors = {leaf: [n for n in modules if leaf.startswith(n + ".")] for leaf in linears}
    wanted = {n for names in ancestors.values() for n in names}

    def pre(leaf):
        def hook(mod, a):
            calls[leaf] = calls.get(leaf, 0) + 1
            order.append(leaf)
            for t, first in seen_inputs:
                if t is a[0]:
                    group_of[leaf] = first
                    break
            else:
                seen_inputs.append((a[0], leaf))
                group_of[leaf] = leaf
        return hook

    def post(name):
        def hook(mod, a, out):
            module_out.setdefault(name, []).append(out)
        return hook

    handles = [m.register_forward_pre_hook(pre(leaf)) for leaf, m in linears.items()]
    handles += [m.register_forward_hook(post(leaf)) for leaf, m in linears.items()]
    handles += [modules[n].register_forward_hook(post(n)) for n in wanted]
    try:
        run(layer, x, args, kwargs)
    finally:
        for h in handles:
            h.remove()
    if any(calls.get(leaf) != 1 for leaf in linears):
        return None
    outputs = {leaf: module_out[leaf][0] for leaf in linears}
    heads = list(dict.fromkeys(group_of[leaf] for leaf in order))
    groups = [[leaf for leaf in order if group_of[leaf] == head] for head in heads]
    rank = {leaf: i for i, g in enumerate(groups) for leaf in g}
    parents = {}
    for leaf in linears:
        for name in sorted(ancestors[leaf], key=len):  # outermost first
            outs = module_out.get(name, [])
            inside = [other for other in linears if other.startswith(name + ".")]
            how = _returns(outs[0], outputs[leaf]) if len(outs) == 1 else None
            if how is not None and all(rank[o] <= rank[leaf] for o in inside):
                parents[leaf] = (name, how)
                break
    return Plan(groups, parents)


class _Replays:
    """Parents replaced by their kept linears' outputs while a pass runs (instance `forward` overrides)."""

    def __init__(self, kept: list[_Kept], current: list, device, buffer, keep: bool):
        self.kept, self.current, self.device, self.buffer = [k for k in kept if k.ready], current, device, buffer
        self.keep = keep  # another pass follows: outputs computed now are kept for it

    def __enter__(self):
        self.saved = []
        for k in self.kept:
            self.saved.append((k.parent, k.parent.__dict__.get("forward")))
            k.parent.forward = self._replay(k)
        return self

    def __exit__(self, *exc):
        for parent, saved in self.saved:
            del parent.forward
            if saved is not None:
                parent.forward = saved

    def _replay(self, k: _Kept):
        def forward(*args, **kwargs):
            return k.result(k.output(self.current[0], self.device, self.buffer, self.keep))
        return forward


@torch.no_grad()
def prune_sequential_(layer: nn.Module, index: int, linears: dict[str, nn.Linear], inputs, stats_kind: str,
                      solve, run, device, phases, rerun: bool = True) -> bool:
    """Prune `linears` of resident layer `index` group by group (`solve(leaves, stats)` prunes one group in
    place), then replace `inputs.hidden` by the pruned layer's outputs (`rerun`). False, with nothing done,
    when the layer does not lend itself to it (see `plan`)."""
    key = signature(layer, linears)
    if key not in inputs.plans:
        with phases("statistics"):
            _, x, args, kwargs = next(inputs.iter_chunks(device, index))
            inputs.plans[key] = plan(layer, linears, run, x, args, kwargs)
            del x
    p = inputs.plans[key]
    if p is None:
        log.info("layer %d: a linear is not called exactly once per forward; statistics from the unpruned layer", index)
        return False
    stat_cls = STATISTICS[stats_kind]
    modules = dict(layer.named_modules())
    current: list = [None]
    kept: list[_Kept] = []
    for group in p.groups:
        replayed = [_Kept(f"kept{len(kept) + i}", linears[leaf], modules[p.parents[leaf][0]], p.parents[leaf][1])
                    for i, leaf in enumerate(leaf for leaf in group if leaf in p.parents)]
        stats = None

        def collect(mod, a):
            nonlocal stats
            t = a[0]
            if stats is None:
                stats = stat_cls(t.shape[-1], device)
            stats.add_(t)
            for k in replayed:
                if k.buf is None:
                    k.buf = inputs.buffer(k.name, (inputs.hidden.shape[0], *t.shape[1:]), t.dtype)
                k.buf[current[0]] = t.to(k.buf.device)
            raise _Stop

        with phases("statistics"):
            handles = [linears[leaf].register_forward_pre_hook(collect) for leaf in group]
            try:
                _pass(layer, index, inputs, device, current, kept, run)
            finally:
                for h in handles:
                    h.remove()
        with phases("solve"):
            solve(group, stats)
            del stats
        for k in replayed:
            k.ready = True
        kept += replayed
    if rerun:
        with phases("rerun"):
            _pass(layer, index, inputs, device, current, kept, run, write=True)
    return True


def _pass(layer, index, inputs, device, current, kept, run, write: bool = False) -> None:
    """Every chunk through `layer` with the ready parents replayed; its outputs into `inputs.hidden` (`write`)."""
    with _Replays(kept, current, device, inputs.buffer, keep=not write):
        for sl, x, args, kwargs in inputs.iter_chunks(device, index):
            current[0] = sl
            try:
                y = run(layer, x, args, kwargs)
            except _Stop:
                continue
            if write:
                inputs.hidden[sl] = y.to(inputs.hidden.device, inputs.hidden.dtype)
