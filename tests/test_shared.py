"""Kernel calls shared by linears that read one input (shared.py, llmprune_linear_group) and the 2:4 fast path."""
import pytest
import torch

from llmprune.methods.masks import nm_mask
from llmprune.sparse import format as fmt
from llmprune.sparse import kernel
from llmprune.sparse.linear import SparseLinear, swap_linears_

COMPILED = [p for p in kernel.available_paths() if p != "reference"]
needs_kernel = pytest.mark.skipif(not COMPILED, reason="no compiled kernel on this machine")


def pruned(shape, sparsity=0.5, seed=0, pattern=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w = w.masked_fill(~nm_mask(w, 2, 4), 0) if pattern == "2:4" else w.masked_fill(torch.rand(shape, generator=g) < sparsity, 0)
    return w.to(torch.bfloat16)


def test_is_2of4_needs_the_exact_pattern_and_whole_words():
    w = pruned((16, 128), pattern="2:4")
    assert kernel.is_2of4(fmt.pack(w)["bitmask"], 128)
    assert kernel.plan(fmt.pack(w)).struct.nm24 == 1
    w[3, 5] = 0  # one group of 4 keeps only 1: popcounts again
    assert not kernel.is_2of4(fmt.pack(w)["bitmask"], 128)
    assert not kernel.is_2of4(fmt.pack(pruned((16, 128)))["bitmask"], 128)
    narrow = pruned((16, 40), pattern="2:4")  # 40 columns: the last word is part padding
    assert not kernel.is_2of4(fmt.pack(narrow)["bitmask"], 40)
    assert kernel.plan(fmt.pack(narrow)).struct.nm24 == 0


@needs_kernel
@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("b", [1, 3, 8])
def test_2of4_fixed_offsets_equal_the_popcount_path_bitwise(path, b):
    w = pruned((48, 256), pattern="2:4")
    p = kernel.plan(fmt.pack(w))
    x = torch.randn(b, 256).to(torch.bfloat16)
    fast = kernel.run(p, x, path)
    p.struct.nm24 = 0  # the kernel reads the struct on every call
    assert torch.equal(kernel.run(p, x, path), fast)
    assert torch.allclose(fast.float(), (x.float() @ w.float().T), atol=0.1, rtol=1e-2)


@needs_kernel
@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("b", [1, 5])
def test_group_call_equals_separate_calls_bitwise(path, threads, b):
    """Mixed out sizes, a bias, a 2:4 and an unstructured member, rows split across the stacked weights."""
    shapes = [(576, 512), (64, 512), (1000, 512)]
    ws = [pruned(s, seed=i, pattern="2:4" if i == 1 else None) for i, s in enumerate(shapes)]
    biases = [None, torch.randn(64), torch.randn(1000)]
    plans = [kernel.plan(fmt.pack(w), bias) for w, bias in zip(ws, biases)]
    x = torch.randn(b, 512).to(torch.bfloat16)
    ys = kernel.run_group_unchecked(plans, kernel.group_addresses(plans), x, kernel._PATH_ID[path], threads)
    for p, y in zip(plans, ys):
        assert torch.equal(y, kernel.run(p, x, path, num_threads=threads))


def test_a_group_is_1_to_8_plans_with_one_in_features():
    plans = [kernel.plan(fmt.pack(pruned((8, 64)))) for _ in range(9)]
    with pytest.raises(ValueError, match="1 to 8 plans"):
        kernel.group_addresses(plans)
    with pytest.raises(ValueError, match="same in_features"):
        kernel.group_addresses([plans[0], kernel.plan(fmt.pack(pruned((8, 96))))])


def _siblings(n=3, in_features=128):
    return [SparseLinear(fmt.pack(pruned((32 + 16 * i, in_features), seed=i))) for i in range(n)]


@needs_kernel
def test_siblings_called_on_one_x_form_a_group_and_give_the_same_outputs():
    mods = _siblings()
    x = torch.randn(1, 128).to(torch.bfloat16)
    want = [torch.nn.functional.linear(x, m.dense_weight()) for m in mods]
    alone = [kernel.run(m.kernel_plan(), x) for m in mods]
    with torch.no_grad():
        [m(x) for m in mods]  # first step: seen together
        other = torch.randn(1, 128).to(torch.bfloat16)
        mods[0](other)  # a new x ends the run: the group forms
        group = mods[0]._group
        assert group is not None and group.members == mods and all(m._group is group for m in mods)
        for _ in range(2):
            x = torch.randn(1, 128).to(torch.bfloat16)
            got = [m(x) for m in mods]
            assert all(torch.equal(g, kernel.run(m.kernel_plan(), x)) for g, m in zip(got, mods))
    assert all(torch.allclose(a.float(), w.float(), atol=0.1) for a, w in zip(alone, want))


@needs_kernel
def test_outputs_nobody_takes_dissolve_the_group_and_results_stay_right():
    mods = _siblings(2)
    with torch.no_grad():
        x = torch.randn(1, 128).to(torch.bfloat16)
        mods[0](x), mods[1](x), mods[0](torch.randn(1, 128).to(torch.bfloat16))
        assert mods[0]._group is not None
        x1, x2 = torch.randn(1, 128).to(torch.bfloat16), torch.randn(1, 128).to(torch.bfloat16)
        mods[0](x1)
        y = mods[1](x2)  # not the x the group computed for: it computes alone, the group dissolves
        assert torch.equal(y, kernel.run(mods[1].kernel_plan(), x2))
        assert mods[0]._group is None and not mods[0]._groupable and not mods[1]._groupable
        mods[0](x1), mods[1](x1), mods[0](x2)  # seen together again: stays apart
        assert mods[0]._group is None


@needs_kernel
def test_an_x_changed_in_place_is_recomputed():
    mods = _siblings(2)
    with torch.no_grad():
        x = torch.randn(1, 128).to(torch.bfloat16)
        mods[0](x), mods[1](x), mods[0](torch.randn(1, 128).to(torch.bfloat16))
        x = torch.randn(1, 128).to(torch.bfloat16)
        mods[0](x)
        x.mul_(2)
        assert torch.equal(mods[1](x), kernel.run(mods[1].kernel_plan(), x))


@needs_kernel
def test_another_linear_in_between_breaks_the_run():
    a, b, c = _siblings(3)
    with torch.no_grad():
        x = torch.randn(1, 128).to(torch.bfloat16)
        a(x), c(torch.randn(1, 128).to(torch.bfloat16)), b(x), a(torch.randn(1, 128).to(torch.bfloat16))
    assert a._group is None and b._group is None


@needs_kernel
def test_llama_decoding_groups_qkv_and_gate_up_with_bitwise_equal_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.masked_fill_(torch.rand(mod.weight.shape) < 0.5, 0)
    model = model.to(torch.bfloat16)
    swap_linears_(model)
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        grouped = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj._group is not None and attn.q_proj._group.members == [attn.q_proj, attn.k_proj, attn.v_proj]
    assert mlp.gate_proj._group.members == [mlp.gate_proj, mlp.up_proj] and mlp.down_proj._group is None
    for m in model.modules():
        if isinstance(m, SparseLinear):
            m._group, m._groupable = None, False
    with torch.no_grad():
        alone = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(grouped.sequences, alone.sequences)
    assert all(torch.equal(g, a) for g, a in zip(grouped.logits, alone.logits))


@needs_kernel
def test_groups_work_under_inference_mode():
    mods = _siblings(2)
    with torch.inference_mode():
        for _ in range(3):
            x = torch.randn(1, 128).to(torch.bfloat16)
            got = [m(x) for m in mods]
            assert all(torch.equal(g, kernel.run(m.kernel_plan(), x)) for g, m in zip(got, mods))
    assert mods[0]._group is not None and mods[0]._group.members == mods
