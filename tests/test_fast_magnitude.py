"""The fused C magnitude passes (llmprune/methods/fast.py) equal the plain-torch reference in masks.py."""
import pytest
import torch

from llmprune.methods import fast, masks

pytestmark = pytest.mark.skipif(fast.load() is None, reason="magnitude kernel could not be built")

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
BITS = {torch.float16: 15, torch.bfloat16: 15, torch.float32: 31}


def tied(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """n values with heavy ties, +-0, inf and NaN sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-12, 13, (n,), generator=g) / 4).to(dtype)
    x[::97] = -0.0
    x[5::301] = float("inf")
    x[7::503] = float("nan")
    return x


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def keys(x: torch.Tensor, bits: int) -> torch.Tensor:
    return masks.magnitude_keys(x, bits).to(torch.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 4095, 4097, 10007, (1 << 20) + 3])
def test_hist_high15_matches_bincount(dtype, n):
    x = tied(n, dtype)
    x[3 % n] = 1e-3
    bits = BITS[dtype]
    ref = torch.bincount(masks._high_keys(x, bits).to(torch.int64), minlength=1 << 15)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert torch.equal(fast.hist_high15(x, bits), ref)
    assert int(ref[0]) == n - int(torch.count_nonzero(x))  # bin 0 counts the zeros


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 13, 4096, 10007, (1 << 20) + 5])
def test_apply_and_keep_mask_match_reference(dtype, n, monkeypatch):
    bits = BITS[dtype]
    x = tied(n, dtype, seed=n)
    k = keys(x, bits)
    top = (1 << bits) - 1
    cases = [(-1, 0), (0, 0), (0, 3), (top, 0), (top, 5)]  # keys a threshold can take
    for key in k.unique()[:6].tolist():
        at = int((k == key).sum())
        cases += [(key, 0), (key, 1), (key, at // 2), (key, at), (key, at + 7)]
    for key, ties in cases:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with monkeypatch.context() as m:
                m.setattr(fast, "load", lambda: None)
                want_keep = masks.threshold_mask(x, key, ties, bits)
                want = x.clone()
                want_counts = masks.apply_threshold_(want, key, ties, bits)
            assert torch.equal(fast.keep_mask(x, key, ties, bits), want_keep), (key, ties)
            got = x.clone()
            assert fast.apply_threshold_(got, key, ties, bits) == want_counts, (key, ties)
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (key, ties)  # bit-exact, -0.0 kept


def test_apply_threshold_counts_by_hand():
    x = torch.tensor([0.0, -1.0, 2.0, 1.0, -0.0, 1.0, 3.0], dtype=torch.float16)
    key = int(masks.magnitude_keys(torch.tensor([1.0], dtype=torch.float16), 15))
    assert masks.apply_threshold_(x, key, 2, 15) == (2, 4)  # zeros 0, -0 before; then -1 and the first 1.0
    assert x.tolist() == [0.0, 0.0, 2.0, 0.0, -0.0, 1.0, 3.0]


def thresholds(tensors, ks, bits):
    return masks.kth_thresholds(lambda: ((i, c) for i, t in enumerate(tensors) for c in masks.iter_chunks(t)),
                                ks, bits, len(tensors))


@pytest.mark.parametrize("dtypes", [(torch.float16,), (torch.bfloat16,), (torch.float32,), (torch.float16, torch.float32)])
def test_kth_thresholds_match_reference(dtypes, monkeypatch):
    torch.manual_seed(0)
    tensors = [tied(1000 + 37 * i, dtypes[i % len(dtypes)], seed=i) for i in range(5)]
    tensors += [torch.randn(3001).to(d) * 0.02 for d in dtypes]  # spread keys: several level-2 bins
    tensors = [t[~t.isnan()] for t in tensors]
    bits = 15 if len(dtypes) == 1 and dtypes[0] != torch.float32 else 31
    total = sum(t.numel() for t in tensors)
    ks = [0, 1, total // 10, total // 2, total // 2 + 1, total - 1, total]
    got = thresholds(tensors, ks, bits)
    monkeypatch.setattr(fast, "load", lambda: None)
    assert got == thresholds(tensors, ks, bits)
