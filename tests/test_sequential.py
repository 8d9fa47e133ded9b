"""The sequential engine (llmprune/sequential.py): its plan, one computation per linear, outputs equal to a
forward of the pruned layer, and the fallback to statistics from the unpruned layer.

Its masks equal a plain true-sequential reference on every architecture in test_engine_parity.py.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from llmprune.arch import Selector, arch_for
from llmprune.config import PruneConfig
from llmprune.engine import (capture_inputs, find_layers, forward_layer_, prune_layer_, prune_model_calibrated_,
                             run_layer, selected_linears)
from llmprune.sequential import plan

CHUNK = 2  # samples per forward


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def setup(model, n: int = 6):
    ids = torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(1))
    path, layers = find_layers(model, arch_for(model.config))
    select = Selector(arch_for(model.config))
    inputs = capture_inputs(model, layers, ids, CHUNK, torch.device("cpu"))
    linears = selected_linears(layers[0], f"{path}.0", select)
    return ids, layers, inputs, linears, {leaf: f"{path}.0.{leaf}.weight" for leaf in linears}


def test_plan_groups_shared_inputs_and_finds_replay_parents():
    model = tiny_llama()
    _, layers, inputs, linears, _ = setup(model)
    _, x, args, kwargs = next(inputs.iter_chunks("cpu", 0))
    p = plan(layers[0], linears, run_layer, x, args, kwargs)
    assert p.groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert p.parents == {"self_attn.o_proj": ("self_attn", 2), "mlp.down_proj": ("mlp", 0)}


@torch.no_grad()
def test_every_linear_computed_once_and_outputs_equal_the_pruned_layer():
    model = tiny_llama()
    ids, layers, inputs, linears, names = setup(model)
    layer = layers[0]
    calls = {leaf: 0 for leaf in linears}
    hooks = [m.register_forward_hook(lambda mod, a, out, leaf=leaf: calls.__setitem__(leaf, calls[leaf] + 1))
             for leaf, m in linears.items()]
    x0 = inputs.hidden.clone()
    prune_layer_(layer, 0, linears, names, inputs, PruneConfig(method="wanda", sparsity=0.5), torch.device("cpu"))
    for h in hooks:
        h.remove()
    chunks = -(-ids.shape[0] // CHUNK)
    assert calls == {leaf: 1 + chunks for leaf in linears}  # the plan's one chunk, then every chunk once
    assert all(float((m.weight == 0).float().mean()) == 0.5 for m in linears.values())
    got = inputs.hidden.clone()
    inputs.hidden.copy_(x0)
    forward_layer_(layer, 0, inputs, torch.device("cpu"))
    assert torch.equal(got, inputs.hidden)  # bit for bit: what a resumed run's replay recomputes


@torch.no_grad()
def test_sequential_differs_from_unpruned_statistics_only_after_the_first_group():
    out = {}
    for sequential in (True, False):
        model = tiny_llama()
        ids, _, _, _, _ = setup(model)
        prune_model_calibrated_(model, Selector(arch_for(model.config)),
                                PruneConfig(method="wanda", sparsity=0.5, sequential=sequential,
                                            extra={"batch_size": CHUNK}), ids)
        out[sequential] = {k: v != 0 for k, v in model.state_dict().items() if k.startswith("model.layers.")}
    for proj in ("q_proj", "k_proj", "v_proj"):  # layer 0's first group reads the same inputs either way
        key = f"model.layers.0.self_attn.{proj}.weight"
        assert torch.equal(out[True][key], out[False][key])
    assert not torch.equal(out[True]["model.layers.0.mlp.down_proj.weight"],
                           out[False]["model.layers.0.mlp.down_proj.weight"])


class _Twice(nn.Module):
    """A block calling its linear twice: its input is not one tensor per forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_plan_refuses_a_linear_called_twice():
    block = _Twice()
    assert plan(block, {"fc": block.fc}, lambda layer, x, args, kwargs: layer(x), torch.randn(2, 8), (), {}) is None
