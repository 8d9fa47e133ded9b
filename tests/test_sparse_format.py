"""The packed bitmask format: hand-computed case, bit-exact round trips, sizes, validation, checkpoints."""
import json

import pytest
import torch

from llmprune.methods.masks import nm_mask
from llmprune.sparse import format as fmt

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def pruned(shape, sparsity, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) < sparsity] = 0
    return w.to(dtype)


def assert_bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(INT_VIEW[a.dtype]), b.view(INT_VIEW[b.dtype]))


def test_hand_computed_tiny_case():
    w = torch.tensor([[1.5, 0.0, -2.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.0, 3.0, 0.0, 0.0, 4.0]], dtype=torch.float16)
    parts = fmt.pack(w)
    assert torch.equal(parts["values"], torch.tensor([1.5, -2.0, 3.0, 4.0], dtype=torch.float16))
    assert torch.equal(parts["bitmask"], torch.tensor([[0b00101], [0], [0b10010]], dtype=torch.int32))
    assert torch.equal(parts["row_offsets"], torch.tensor([0, 2, 2, 4]))
    assert torch.equal(parts["shape"], torch.tensor([3, 5]))
    assert_bits_equal(fmt.unpack(parts), w)


def test_bit_31_is_the_sign_bit_of_the_word():
    w = torch.zeros(1, 33)
    w[0, 31] = 1.0
    w[0, 32] = 2.0
    parts = fmt.pack(w)
    assert parts["bitmask"].tolist() == [[-(2**31), 1]]
    assert_bits_equal(fmt.unpack(parts), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(7, 37), (16, 64), (3, 100), (5, 1)])
def test_round_trip_bit_exact(dtype, sparsity, shape):
    w = pruned(shape, sparsity, dtype)
    parts = fmt.pack(w)
    assert parts["values"].dtype == dtype
    assert parts["bitmask"].shape == (shape[0], (shape[1] + 31) // 32)
    assert parts["values"].numel() == int((w != 0).sum())
    fmt.check_parts(parts, deep=True)
    assert_bits_equal(fmt.unpack(parts), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_2_4_and_all_zero_rows(dtype):
    w = pruned((12, 96), 0.0, dtype)
    w = w * nm_mask(w, 2, 4)  # multiplying by a mask leaves -0.0 where negative weights were pruned
    w[[0, 5, 11]] = 0
    parts = fmt.pack(w)
    spans = parts["row_offsets"].diff()
    assert spans[[0, 5, 11]].tolist() == [0, 0, 0]
    assert (spans[[1, 2, 3, 4, 6, 7, 8, 9, 10]] == 48).all()  # the -0.0 entries cost no storage
    assert_bits_equal(fmt.unpack(parts), torch.where(w == 0, torch.zeros_like(w), w))


def test_row_chunks_give_the_same_parts(monkeypatch):
    w = pruned((37, 70), 0.6, torch.bfloat16)
    whole = fmt.pack(w)
    monkeypatch.setattr(fmt, "CHUNK", 100)  # 1 row per chunk
    chunked = fmt.pack(w)
    for k in fmt.SUFFIXES:
        assert torch.equal(whole[k], chunked[k])
    assert_bits_equal(fmt.unpack(chunked), w)


def test_negative_zero_is_pruned_and_nan_inf_are_kept():
    w = torch.tensor([[-0.0, 1.0, float("nan"), float("-inf"), 0.0]], dtype=torch.bfloat16)
    parts = fmt.pack(w)
    assert parts["values"].numel() == 3
    back = fmt.unpack(parts)
    assert back[0, 0].view(torch.int16).item() == 0  # -0.0 comes back as +0.0
    expected = w.clone()
    expected[0, 0] = 0.0
    assert_bits_equal(back, expected)


def test_size_at_half_sparsity_fp16():
    w = pruned((256, 1024), 0.0, torch.float16)
    w = w * nm_mask(w, 2, 4)
    parts = fmt.pack(w)
    dense = w.numel() * w.element_size()
    assert fmt.nbytes(parts) <= 0.57 * dense
    assert fmt.nbytes(parts) == fmt.estimate_nbytes(256, 1024, w.numel() // 2, torch.float16)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        fmt.pack(torch.zeros(4))
    with pytest.raises(ValueError, match="bfloat16"):
        fmt.pack(torch.zeros(2, 2, dtype=torch.int8))
    parts = fmt.pack(pruned((4, 40), 0.5, torch.float32))
    with pytest.raises(ValueError, match="lacks"):
        fmt.unpack({k: v for k, v in parts.items() if k != "shape"})
    bad = dict(parts, row_offsets=parts["row_offsets"].flip(0).contiguous())
    with pytest.raises(ValueError):
        fmt.check_parts(bad, deep=True)
    pad = dict(parts, bitmask=parts["bitmask"].clone())
    pad["bitmask"][0, 1] |= 1 << 20  # column 52 >= in
    with pytest.raises(ValueError, match="disagree"):
        fmt.check_parts(pad, deep=True)


def test_packed_names_and_sparsity_config():
    parts = fmt.pack(pruned((2, 8), 0.5, torch.float32))
    keys = [f"a.weight.{s}" for s in parts] + ["b.weight.bitmask", "c.weight"]
    assert fmt.packed_names(keys) == ["a.weight"]
    cfg = fmt.sparsity_config("2:4", 0.5, modules=["b", "a"])
    assert cfg["format"] == "llmprune-bitmask" and cfg["version"] == fmt.FORMAT_VERSION
    assert cfg["pattern"] == "2:4" and cfg["modules"] == ["a", "b"]
    assert fmt.sparsity_config()["pattern"] is None


# ---------------------------------------------------------------------------- checkpoints (writer.py)


def test_sparse_encoder_declares_and_yields_parts_in_order(tmp_path):
    from types import SimpleNamespace

    from llmprune.config import NMPattern
    from llmprune.sparse.writer import SparseEncoder

    enc = SparseEncoder({"a.weight"})
    assert enc.names("a.weight") == [f"a.weight.{s}" for s in fmt.SUFFIXES]
    assert enc.names("a.bias") == ["a.bias"]
    w = pruned((4, 40), 0.5, torch.bfloat16)
    out = list(enc.encode("a.weight", w))
    assert [n for n, _ in out] == enc.names("a.weight")
    assert_bits_equal(fmt.unpack({n.rsplit(".", 1)[1]: t for n, t in out}), w)
    [(name, t)] = list(enc.encode("a.bias", w[0]))
    assert name == "a.bias" and t is not None and torch.equal(t, w[0])
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    enc.finish(tmp_path, None, SimpleNamespace(pattern=NMPattern(2, 4), target_sparsity=0.5, method="wanda"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["sparsity_config"]["pattern"] == "2:4" and cfg["sparsity_config"]["modules"] == ["a.weight"]


def test_prune_sparse_format_round_trips_and_loads_with_kernels(tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmprune.config import PruneConfig
    from llmprune.models import load_model
    from llmprune.prune import prune_checkpoint
    from llmprune.models import load_sparse_model
    from llmprune.sparse import SparseLinear

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "src")
    prune = PruneConfig(method="magnitude", sparsity=0.5, scope="layer")
    dense_rec = prune_checkpoint(str(tmp_path / "src"), tmp_path / "dense", prune, fmt="dense")
    sparse_rec = prune_checkpoint(str(tmp_path / "src"), tmp_path / "sparse", prune, fmt="sparse")
    assert sparse_rec["output_bytes"] < 0.75 * dense_rec["output_bytes"]  # embeddings stay dense
    dense, _ = load_model(tmp_path / "dense")
    sparse, _ = load_model(tmp_path / "sparse")
    want, got = dense.state_dict(), sparse.state_dict()
    assert sorted(want) == sorted(got)
    for k in want:
        assert_bits_equal(got[k], torch.where(want[k] == 0, torch.zeros_like(want[k]), want[k]))
    packed = load_sparse_model(tmp_path / "sparse", transformers.AutoModelForCausalLM, sparse_kernels=True)
    assert sum(isinstance(m, SparseLinear) for m in packed.modules()) == 14
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        assert torch.allclose(packed(ids).logits.float(), dense(ids).logits.float(), atol=2e-2)
