"""SparseGPT: identity at sparsity 0, exact counts, N:M, lower reconstruction error than magnitude and Wanda,
dead inputs, non-positive-definite Hessians, and the lazy block update against a blocksize-free run."""
import logging

import pytest
import torch

from llmprune.config import NMPattern
from llmprune.methods.masks import mask_for
from llmprune.methods.sparsegpt import HessianStats, sparsegpt_prune
from llmprune.methods.wanda import ActNormStats, wanda_prune

P24 = NMPattern(2, 4)


def correlated_inputs(tokens=2048, d=256, seed=0):
    """Inputs with strongly correlated features and very different scales (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, d // 4, generator=g)
    mix = torch.randn(d // 4, d, generator=g)
    scale = torch.exp(torch.randn(d, generator=g))
    return (z @ mix + 0.1 * torch.randn(tokens, d, generator=g)) * scale  # (tokens, in)


def stats(x):
    h, a = HessianStats(x.shape[1]), ActNormStats(x.shape[1])
    for part in x.split(300):
        h.add_(part)
        a.add_(part)
    return h.H, a.sum_sq


def recon_error(W, Wp, x):
    return float((x @ (W - Wp).T).norm() / (x @ W.T).norm())


def test_hessian_running_average():
    x = correlated_inputs(tokens=500, d=32)
    H, _ = stats(x)
    assert torch.allclose(H, 2 * x.T @ x / 500, rtol=1e-4, atol=1e-3)


def test_sparsity_zero_is_identity():
    x = correlated_inputs(d=128)
    W = torch.randn(64, 128)
    H, _ = stats(x)
    assert torch.equal(sparsegpt_prune(W, H, 0.0), W)


@pytest.mark.parametrize("sparsity", [0.5, 0.37])
def test_exact_sparsity_layer_and_row(sparsity):
    x = correlated_inputs(d=320)  # 320 columns: two full blocks and a partial one
    W = torch.randn(48, 320)
    H, _ = stats(x)
    out = sparsegpt_prune(W, H, sparsity)
    assert int((out == 0).sum()) == round(sparsity * W.numel())
    rows = sparsegpt_prune(W, H, sparsity, scope="row")
    assert ((rows == 0).sum(dim=1) == round(sparsity * 320)).all()


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8), NMPattern(1, 4)])
def test_nm_holds_in_every_group(pattern):
    x = correlated_inputs(d=256)
    W = torch.randn(40, 256)
    H, _ = stats(x)
    out = sparsegpt_prune(W, H, 0.0, pattern=pattern)
    nonzero = (out != 0).reshape(-1, pattern.m).sum(dim=1)
    assert (nonzero == pattern.n).all()


def test_block_size_does_not_change_nm_result():
    """N:M masks do not depend on blocks, so lazy batched updates must equal one block over all columns."""
    x = correlated_inputs(d=256)
    W = torch.randn(32, 256)
    H, _ = stats(x)
    a = sparsegpt_prune(W, H, 0.0, pattern=P24, blocksize=16)
    b = sparsegpt_prune(W, H, 0.0, pattern=P24, blocksize=256)
    assert torch.equal(a == 0, b == 0)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern", [None, P24])
def test_lower_error_than_magnitude_and_wanda(pattern):
    x = correlated_inputs(d=256, seed=3)
    W = torch.randn(96, 256)
    H, act = stats(x)
    mag = W * mask_for(W, 0.5, scope="row", pattern=pattern)
    wan = wanda_prune(W, act, 0.5, pattern=pattern)
    sgpt = sparsegpt_prune(W, H, 0.5, pattern=pattern)
    e_mag, e_wan, e_sgpt = (recon_error(W, p, x) for p in (mag, wan, sgpt))
    assert e_sgpt < 0.8 * e_wan and e_wan < e_mag, (e_mag, e_wan, e_sgpt)


def test_dead_inputs_pruned_first_and_no_nan():
    x = correlated_inputs(d=128)
    x[:, :16] = 0  # 16 inputs never fire
    W = torch.randn(32, 128)
    H, _ = stats(x)
    out = sparsegpt_prune(W, H, 0.1)
    assert torch.isfinite(out).all()
    assert int((out == 0).sum()) == round(0.1 * W.numel())
    assert (out[:, :16] == 0).sum() > 0.7 * out[:, :16].numel()  # free to remove -> removed first


def test_not_positive_definite_raises_damp_and_warns(caplog):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=g)
    H = a @ a.T  # rank 8 of 64: singular
    H -= 0.02 * torch.diagonal(H).mean() * torch.eye(64)  # indefinite; 1% dampening is not enough
    W = torch.randn(16, 64, generator=g)
    with caplog.at_level(logging.WARNING, logger="llmprune.methods.sparsegpt"):
        out = sparsegpt_prune(W, H, 0.5, name="model.layers.3.mlp.up_proj")
    assert torch.isfinite(out).all()
    assert int((out == 0).sum()) == W.numel() // 2
    assert "model.layers.3.mlp.up_proj" in caplog.text


def test_dtype_round_trip():
    x = correlated_inputs(d=128)
    W = torch.randn(32, 128).to(torch.bfloat16)
    H, _ = stats(x)
    out = sparsegpt_prune(W, H, 0.5)
    assert out.dtype == torch.bfloat16
    assert int((out == 0).sum()) >= W.numel() // 2


def test_real_layer_sparsegpt_beats_wanda_beats_magnitude(smollm2_dir):
    """Layer 2's q_proj and down_proj of SmolLM2 (the built-in model), on the real inputs they see for a
    pydoc text prefix."""
    from pydoc_data.topics import topics
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = tok("\n".join(list(topics.values())[:40]), return_tensors="pt").input_ids[:, :1024]
    layer = model.model.layers[2]
    seen = {}

    class Enough(Exception):
        pass

    def keep_input(name):
        def hook(module, args, output):
            seen[name] = args[0].reshape(-1, args[0].shape[-1])
            if name == "down":  # the last linear of layer 2: the rest of the model is not needed
                raise Enough
        return hook

    hooks = [m.register_forward_hook(keep_input(n))
             for n, m in (("q", layer.self_attn.q_proj), ("down", layer.mlp.down_proj))]
    with torch.no_grad(), pytest.raises(Enough):
        model(ids[:, :512])
    for h in hooks:
        h.remove()
    for n, lin in (("q", layer.self_attn.q_proj), ("down", layer.mlp.down_proj)):
        x, W = seen[n], lin.weight.detach()
        H, act = stats(x)
        for pattern in (None, P24):
            mag = W * mask_for(W, 0.5, scope="row", pattern=pattern)
            e = [recon_error(W, p, x) for p in (mag, wanda_prune(W, act, 0.5, pattern=pattern),
                                                 sparsegpt_prune(W, H, 0.5, pattern=pattern))]
            assert e[2] < e[1] < e[0], (n, pattern, e)


def test_hessian_upper_blocks_mirror_to_the_full_product():
    """H is accumulated only on and above the diagonal blocks; read back it is the full symmetric 2/N X^T X,
    also after more batches arrive once it was read."""
    x = correlated_inputs(tokens=900, d=300)  # 300 = 2 blocks of 128 and a partial one
    h = HessianStats(300)
    h.add_(x[:400])
    assert torch.allclose(h.H, 2 * x[:400].T @ x[:400] / 400, rtol=1e-4, atol=1e-3)
    h.add_(x[400:])
    assert torch.allclose(h.H, h.H.T, rtol=1e-5, atol=1e-4)
    assert torch.allclose(h.H, 2 * x.T @ x / 900, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("pattern,scope", [(None, "layer"), (None, "row"), (P24, "layer")])
def test_shared_solve_equals_one_solve_per_weight(pattern, scope):
    """q/k/v (or gate/up) share one Hessian: stacked into one solve, each weight keeps its own count and mask."""
    from llmprune.methods.base import LayerSpec
    from llmprune.methods.sparsegpt import prune_shared

    x = correlated_inputs(d=256)
    h = HessianStats(256)
    h.add_(x)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(rows, 256, generator=g) * s for rows, s in ((96, 1.0), (32, 3.0), (40, 0.2))]
    specs = [LayerSpec(0.55, pattern, scope, f"w{i}") for i in range(3)]
    together = prune_shared(weights, h, specs)
    for w, spec, got in zip(weights, specs, together):
        alone = sparsegpt_prune(w, h.H, spec.sparsity, pattern=pattern, scope=scope)
        assert torch.equal(got == 0, alone == 0), spec.name
        assert torch.allclose(got, alone, atol=1e-5, rtol=1e-4), spec.name
        if pattern is None and scope == "layer":
            assert int((got == 0).sum()) == round(0.55 * w.numel())
