"""CPU bitmask kernels: parity of every compiled path with the torch reference, fallbacks, SparseLinear."""
import logging

import pytest
import torch
from torch import nn

from llmprune.errors import LlmpruneError
from llmprune.methods.masks import nm_mask
from llmprune.sparse import format as fmt
from llmprune.sparse import kernel
from llmprune.sparse.linear import SparseLinear, swap_linears_

COMPILED = [p for p in kernel.available_paths() if p != "reference"]  # builds the library once per session


def pruned(shape, sparsity, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w.masked_fill(torch.rand(shape, generator=g) < sparsity, 0).to(dtype)


def exact(x, w):
    return x.double() @ w.double().T  # (b, out)


def test_this_machine_compiles_at_least_the_portable_path():
    if kernel.unavailable_reason() is not None:
        pytest.skip(f"no compiler here: {kernel.unavailable_reason()}")
    assert "generic" in COMPILED


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("x_fp32", [False, True], ids=["x_lowp", "x_fp32"])
@pytest.mark.parametrize("b", [1, 5, 8])  # 1-3 rows: one output row at a time; 4-8: row pairs
@pytest.mark.parametrize("case", ["odd_in", "2:4", "zero_rows", "dense", "empty", "wide"])
def test_parity_with_reference(path, dtype, x_fp32, b, case):
    shape = {"odd_in": (19, 77), "2:4": (24, 128), "zero_rows": (9, 64), "dense": (8, 40), "empty": (4, 33),
             "wide": (3, 1000)}[case]
    w = pruned(shape, {"dense": 0.0, "empty": 1.0}.get(case, 0.5), dtype)
    if case == "2:4":
        w = w.masked_fill(~nm_mask(w, 2, 4), 0)
    if case == "zero_rows":
        w[::2] = 0
    parts = fmt.pack(w)
    x = torch.randn(b, shape[1]).to(dtype)
    if x_fp32:
        x = x.float()
    y = kernel.sparse_matmul(x, parts, path, out_dtype=torch.float32)
    assert y.dtype == torch.float32 and y.shape == (b, shape[0])
    want = exact(x, w)
    ref = kernel.reference_matmul(x.float(), parts)
    bound = 1e-5 * (x.double().abs() @ w.double().abs().T) + 1e-6  # fp32 accumulation error scale
    assert ((y.double() - want).abs() <= bound).all()
    assert ((ref.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("path", COMPILED)
def test_output_in_x_dtype_and_large_values(path):
    w = pruned((16, 96), 0.5, torch.bfloat16) * 1000
    parts = fmt.pack(w)
    x = torch.randn(2, 96, dtype=torch.bfloat16)
    y = kernel.sparse_matmul(x, parts, path)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), exact(x, w).float(), rtol=1e-2, atol=1e-1)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_split_rows_without_changing_results(threads):
    w = pruned((300, 512), 0.5, torch.bfloat16)  # 300*512 weights: enough work for 2 threads
    parts = fmt.pack(w)
    x = torch.randn(4, 512)
    one = kernel.sparse_matmul(x, parts, num_threads=1)
    assert torch.equal(kernel.sparse_matmul(x, parts, num_threads=threads), one)


def test_more_than_8_rows_and_fp32_values_use_the_reference():
    w = pruned((8, 40), 0.5, torch.float32)
    x = torch.randn(12, 40)
    assert torch.allclose(kernel.sparse_matmul(x, fmt.pack(w)), x @ w.T, atol=1e-5)
    wb = w.bfloat16()
    assert torch.allclose(kernel.sparse_matmul(x, fmt.pack(wb)), x @ wb.float().T, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_weight_equals_unpack(dtype):
    parts = fmt.pack(pruned((33, 70), 0.6, dtype))
    assert torch.equal(kernel.dense_weight(parts), fmt.unpack(parts))


def test_bad_path_and_mismatched_x_are_errors():
    parts = fmt.pack(pruned((4, 64), 0.5, torch.bfloat16))
    if COMPILED:
        with pytest.raises(ValueError, match="unknown kernel path"):
            kernel.sparse_matmul(torch.randn(1, 64), parts, "avx9000")
        with pytest.raises(ValueError, match="mask words"):
            kernel.sparse_matmul(torch.randn(1, 20), parts, COMPILED[-1])


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.setattr(kernel, "_lib_error", "gcc not found")


def test_fallback_without_compiled_kernel(no_kernel, caplog):
    assert kernel.available_paths() == ["reference"]
    w = pruned((8, 40), 0.5, torch.bfloat16)
    x = torch.randn(1, 40, dtype=torch.bfloat16)
    assert torch.equal(kernel.sparse_matmul(x, fmt.pack(w)), kernel.reference_matmul(x, fmt.pack(w)))
    model = nn.Sequential(nn.Linear(40, 8, bias=False).to(torch.bfloat16))
    model[0].weight.data.copy_(w)
    with caplog.at_level(logging.WARNING):
        assert swap_linears_(model) == 0
    assert "gcc not found" in caplog.text and isinstance(model[0], nn.Linear)


# ---------------------------------------------------------------------------- SparseLinear


def test_sparse_linear_matches_linear_with_bias_and_any_row_count():
    lin = nn.Linear(70, 24).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.masked_fill_(torch.rand(24, 70) < 0.5, 0)
    sl = SparseLinear.from_linear(lin)
    for rows in (1, 5, 8, 9, 30):
        x = torch.randn(rows, 70, dtype=torch.bfloat16)
        want = (x.float() @ lin.weight.float().T + lin.bias.float())
        got = sl(x.reshape(1, rows, 70))
        assert got.shape == (1, rows, 24) and got.dtype == torch.bfloat16
        assert torch.allclose(got.float().reshape(rows, 24), want, rtol=2e-2, atol=2e-2)


def test_sparse_linear_state_dict_uses_checkpoint_names():
    lin = nn.Linear(40, 8, bias=False).to(torch.float16)
    with torch.no_grad():
        lin.weight.masked_fill_(torch.rand(8, 40) < 0.5, 0)
    sl = SparseLinear.from_linear(lin)
    sd = sl.state_dict()
    assert sorted(sd) == sorted(f"weight.{s}" for s in fmt.SUFFIXES)
    again = SparseLinear({s: sd[f"weight.{s}"].clone() for s in fmt.SUFFIXES})  # as a loader builds it from a file
    again.load_state_dict(sd)
    assert torch.equal(again.dense_weight(), lin.weight.detach())
    assert again.weight.dtype == torch.float16 and tuple(again.weight.size()) == (8, 40)
    corrupt = dict(sd)
    corrupt["weight.bitmask"] = sd["weight.bitmask"].clone()
    corrupt["weight.bitmask"][0, 0] ^= 1 << 3  # one more or one fewer kept column than row_offsets says
    with pytest.raises(ValueError, match="disagree"):
        again.load_state_dict(corrupt)


def tiny_llama(dtype=torch.bfloat16):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                mod.weight.masked_fill_(torch.rand(mod.weight.shape) < 0.5, 0)
    return model.to(dtype)


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel on this machine")
def test_swapped_llama_gives_the_same_logits_and_generates():
    model = tiny_llama()
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        want_prefill, want_step = model(ids).logits, model(ids[:, :4]).logits
    assert swap_linears_(model) == 14  # 7 per layer; lm_head is tied to the embeddings and stays dense
    assert isinstance(model.model.layers[0].mlp.down_proj, SparseLinear)
    assert isinstance(model.lm_head, nn.Linear)
    with torch.no_grad():
        got_prefill, got_step = model(ids).logits, model(ids[:, :4]).logits  # dense path, kernel path
    assert torch.allclose(got_prefill.float(), want_prefill.float(), atol=2e-2)
    assert torch.allclose(got_step.float(), want_step.float(), atol=2e-2)
    out = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 10)


def test_swap_skips_dense_fp32_and_unnamed_modules():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight.masked_fill_(torch.rand(32, 64) < 0.5, 0)
        model[2].weight.masked_fill_(torch.rand(8, 32) < 0.5, 0)
    model = model.to(torch.float16)
    model[2].float()
    if not COMPILED:
        pytest.skip("no compiled kernel")
    assert swap_linears_(model, names=["0", "1", "2"]) == 1  # 1 is dense, 2 is fp32
    assert isinstance(model[0], SparseLinear) and isinstance(model[1], nn.Linear)
    with pytest.raises(LlmpruneError, match="No module named 'nope'|No module named nope"):
        swap_linears_(model, names=["nope"])


def test_portable_only_build_runs_the_generic_path(monkeypatch):
    """Stand-in for a non-x86 machine: the file must compile and run with every x86 section left out."""
    if kernel.unavailable_reason() is not None:
        pytest.skip("no compiler here")
    monkeypatch.setattr(kernel, "CFLAGS", kernel.CFLAGS + ("-DLLMPRUNE_PORTABLE_ONLY",))
    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.setattr(kernel, "_paths", ("reference",))
    assert kernel.available_paths() == ["generic", "reference"]
    w = pruned((10, 70), 0.5, torch.bfloat16)
    x = torch.randn(3, 70)
    assert torch.allclose(kernel.sparse_matmul(x, fmt.pack(w)), x @ w.float().T, atol=1e-5)
    assert torch.equal(kernel.dense_weight(fmt.pack(w)), w)
