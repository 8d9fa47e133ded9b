"""CPU bitmask kernels: parity of every compiled path with the torch reference, fallbacks, SparseLinear."""
import logging

import pytest
import torch
from torch import nn

from llmprune.errors import LlmpruneError
from llmprune.methods.masks import nm_mask
from llmprune.sparse import format as fmt
from llmprune.sparse import kernel
from llmprune.sparse.linear import KernelLinear, SparseLinear, swap_linears_

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


# ---------------------------------------------------------------------------- plans, dtypes, threads


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("dtype,scale", [(torch.bfloat16, 1.0), (torch.float16, 1.0), (torch.float16, 3e-4),
                                         (torch.float16, 300.0)])  # fp16 subnormal and overflowing outputs
def test_y_in_x_dtype_is_the_fp32_result_rounded_once(path, dtype, scale):
    """The library rounds y itself: it must equal torch's rounding of the same fp32 accumulators, bit for bit."""
    w = (pruned((50, 200), 0.5, torch.float32) * scale).to(dtype)
    bias = torch.randn(50).to(dtype)
    p = kernel.plan(fmt.pack(w), bias)
    for b in (1, 3, 8):
        x = (torch.randn(b, 200) * scale).to(dtype)
        got = kernel.run(p, x, "avx512" if path == "avx512bf16" else path)  # same accumulation order as fp32 x
        want = kernel.run(p, x.float(), "avx512" if path == "avx512bf16" else path).to(dtype)
        assert got.dtype == dtype
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (got - want).abs().max()
    if scale == 300.0:
        assert torch.isinf(got).any()  # the case exercised overflow


@pytest.mark.parametrize("path", COMPILED)
@pytest.mark.parametrize("in_features", [40, 64, 77])
def test_dense_plan_reads_the_weight_in_place(path, in_features):
    w = torch.randn(33, in_features).to(torch.bfloat16)
    bias = torch.randn(33)
    p = kernel.dense_plan(w, bias)
    x = torch.randn(5, in_features)
    want = x.double() @ w.double().T + bias.double()
    bound = 1e-5 * (x.double().abs() @ w.double().abs().T + bias.double().abs()) + 1e-6
    assert ((kernel.run(p, x, path).double() - want).abs() <= bound).all()
    with torch.no_grad():
        w.mul_(2)  # the plan points at w's storage: it sees the change (a tied weight stays tied)
    assert ((kernel.run(p, x, path).double() - (2 * (want - bias.double()) + bias.double())).abs() <= 2 * bound).all()
    with pytest.raises(ValueError, match="contiguous 2-D bf16/fp16"):
        kernel.dense_plan(w.float())


def test_uneven_rows_split_across_threads_give_the_same_result():
    """Rows are split by bytes, not count: one dense row among near-empty ones lands whole on one thread."""
    w = pruned((400, 640), 0.97, torch.bfloat16)
    w[7] = torch.randn(640).to(torch.bfloat16)  # one full row
    w[390:] = torch.randn(10, 640).to(torch.bfloat16)
    p = kernel.plan(fmt.pack(w))
    x = torch.randn(3, 640)
    one = kernel.run(p, x, num_threads=1)
    for threads in (2, 3, 8):
        assert torch.equal(kernel.run(p, x, num_threads=threads), one)
    assert torch.allclose(one, x @ w.float().T, atol=1e-4)


def _before_guard_page(t: torch.Tensor):
    """A copy of 1-D `t` ending exactly where a PROT_NONE page begins: reading one byte past it faults."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    nbytes = t.numel() * t.element_size()
    assert nbytes <= page
    buf = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None)
    assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0  # PROT_NONE
    guarded = torch.frombuffer(buf, dtype=t.dtype, count=t.numel(), offset=page - nbytes)
    guarded.copy_(t)
    return guarded, buf


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel on this machine")
def test_last_row_reads_stay_inside_the_values():
    """The AVX2 decode reads 16 bytes at each kept value; the last rows must not read past the tensor (a
    guard page after the values turns any such read into a crash)."""
    for in_features in (8, 9, 31, 33, 100):
        w = pruned((3, in_features), 0.5, torch.bfloat16)
        w[-1, -1] = 1.5  # a kept value at the very end of values
        parts = fmt.pack(w)
        parts["values"], keep = _before_guard_page(parts["values"])
        x = torch.randn(2, in_features)
        for path in COMPILED:
            for dtype in (torch.bfloat16, torch.float16):
                p = kernel.plan({**parts, "values": parts["values"].view(dtype)})
                assert kernel.run(p, x, path).shape == (2, 3)
        dense, keep2 = _before_guard_page(w.reshape(-1))
        want = x @ w.float().T
        for path in COMPILED:
            got = kernel.run(kernel.dense_plan(dense.view(3, in_features)), x, path)
            assert torch.allclose(got, want, atol=1e-4)
        del keep, keep2


def test_run_checks_its_arguments():
    p = kernel.plan(fmt.pack(pruned((4, 64), 0.5, torch.bfloat16)))
    with pytest.raises(ValueError, match="64 features"):
        kernel.run(p, torch.randn(1, 63))
    with pytest.raises(ValueError, match="1 to 8 rows"):
        kernel.run(p, torch.randn(9, 64))
    with pytest.raises(ValueError, match="64 features"):
        kernel.run(p, torch.randn(1, 64, dtype=torch.float64))
    assert kernel.run(p, torch.randn(2, 3, 64)[:, 1]).shape == (2, 4)  # strided x is copied first
    with pytest.raises(ValueError, match="bf16/fp16 values"):
        kernel.plan(fmt.pack(pruned((4, 64), 0.5, torch.float32)))


def test_sparse_linear_plan_follows_moved_tensors():
    lin = nn.Linear(64, 16).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.masked_fill_(torch.rand(16, 64) < 0.5, 0)
    sl = SparseLinear.from_linear(lin)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    first = sl(x)
    plan = sl.kernel_plan()
    sl.load_state_dict({k: v.clone() for k, v in sl.state_dict().items()}, assign=True)  # new tensors
    assert sl.kernel_plan() is not plan and torch.equal(sl(x), first)
    sl.half()  # values become fp16: a new plan over the new buffers
    assert sl.weight.dtype == torch.float16
    assert torch.allclose(sl(x.half()).float(), first.float(), atol=3e-2)


def test_kernel_linear_keeps_a_tied_weight_tied():
    emb = nn.Embedding(50, 64).to(torch.bfloat16)
    head = nn.Linear(64, 50, bias=False).to(torch.bfloat16)
    head.weight = emb.weight
    kl = KernelLinear.from_linear(head)
    assert kl.weight is emb.weight
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.allclose(kl(x).float(), x.float() @ emb.weight.float().T, atol=1e-2, rtol=1e-2)
    with torch.no_grad():
        emb.weight.mul_(-1)
    assert torch.allclose(kl(x).float(), x.float() @ emb.weight.float().T, atol=1e-2, rtol=1e-2)
    x12 = torch.randn(12, 64, dtype=torch.bfloat16)  # more rows than the kernel takes: F.linear
    assert torch.equal(kl(x12), torch.nn.functional.linear(x12, emb.weight))
    kl.float()
    assert torch.allclose(kl(x.float()), x.float() @ emb.weight.float().T, atol=1e-5)  # plan dropped, F.linear


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel on this machine")
def test_swap_puts_dense_and_tied_bf16_linears_on_the_dense_kernel():
    model = tiny_llama()
    swap_linears_(model)
    assert type(model.lm_head) is KernelLinear and model.lm_head.weight is model.model.embed_tokens.weight
    model2 = tiny_llama()
    swap_linears_(model2, dense_kernels=False)
    assert type(model2.lm_head) is nn.Linear


@pytest.mark.skipif(not COMPILED, reason="no compiled kernel on this machine")
def test_stream_bandwidth_probe_reports_both_figures():
    bw = kernel.stream_bandwidth(nbytes=4 << 20, num_threads=2, repeats=2)
    assert set(bw) == {"read_gbs", "copy_gbs"} and all(v > 0 for v in bw.values())
