"""Exact selection and N:M masks against hand-written tensors and naive references."""
import itertools

import pytest
import torch

from llmprune.config import PruneConfig
from llmprune.methods.magnitude import GlobalMagnitude
from llmprune.methods.masks import kth_threshold, iter_chunks, nm_mask, row_mask, satisfies_nm, smallest_k_mask


def test_nm_hand_written_1x8():
    w = torch.tensor([[1.0, -5.0, 3.0, 2.0, 0.0, 0.5, -0.25, 7.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, False, True, False, True]]
    assert nm_mask(w, 1, 4).tolist() == [[False, True, False, False, False, False, False, True]]
    assert nm_mask(w, 4, 8).tolist() == [[False, True, True, True, False, False, False, True]]
    ties = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]])  # ties keep the earlier inputs
    assert nm_mask(ties, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_matches_naive_loop(n, m):
    w = torch.randn(6, 4 * m)
    keep = nm_mask(w, n, m)
    naive = torch.zeros_like(keep)
    for r, g in itertools.product(range(w.shape[0]), range(0, w.shape[1], m)):
        order = sorted(range(m), key=lambda j: -abs(float(w[r, g + j])))
        for j in order[:n]:
            naive[r, g + j] = True
    assert torch.equal(keep, naive)
    assert satisfies_nm(w * keep, n, m) and not satisfies_nm(w, n, m)


def test_nm_rejects_indivisible_input():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(torch.randn(2, 6), 2, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_smallest_k_is_exact_with_ties(dtype):
    w = torch.randint(-4, 5, (37, 29)).to(dtype)  # many ties and zeros
    for k in (0, 1, 100, 537, w.numel() - 1):
        keep = smallest_k_mask(w, k)
        assert int((~keep).sum()) == k
        if 0 < k < w.numel():
            assert w.float().abs()[~keep].max() <= w.float().abs()[keep].min()
    # ties at the threshold go in row-major order: the pruned tied elements come first
    keep = smallest_k_mask(torch.ones(10), 4)
    assert keep.tolist() == [False] * 4 + [True] * 6


@pytest.mark.parametrize("dtypes", [(torch.float16,), (torch.bfloat16,), (torch.float32,), (torch.float16, torch.float32)])
def test_global_threshold_matches_sort(dtypes):
    torch.manual_seed(0)
    tensors = [torch.randn(17, 23).to(dtypes[i % len(dtypes)]) * (i + 1) for i in range(4)]
    allv = torch.cat([t.float().abs().reshape(-1) for t in tensors])
    for s in (0.1, 0.5, 0.93):
        named = {f"t{i}": t for i, t in enumerate(tensors)}
        g = GlobalMagnitude(named, named.__getitem__, (t.dtype for t in tensors), allv.numel(), s)
        keeps = [g.mask(n, t) for n, t in reversed(named.items())][::-1]  # any order gives the same masks
        k = round(s * allv.numel())
        assert sum(int((~m).sum()) for m in keeps) == k
        kth = allv.sort().values[k - 1]
        for t, m in zip(tensors, keeps):
            assert (t.float().abs()[~m] <= kth).all() and (t.float().abs()[m] >= kth).all()


def test_global_masks_are_nested():
    torch.manual_seed(1)
    tensors = [torch.randint(-50, 50, (32, 16)).half() / 8 for _ in range(3)]  # heavy ties
    n = sum(t.numel() for t in tensors)
    prev = None
    for s in (0.2, 0.4, 0.41, 0.6, 0.9):
        named = {f"t{i}": t for i, t in enumerate(tensors)}
        g = GlobalMagnitude(named, named.__getitem__, [torch.float16], n, s)
        keep = torch.cat([g.mask(n, t).reshape(-1) for n, t in named.items()])
        assert int((~keep).sum()) == round(s * n)
        if prev is not None:
            assert not (keep & ~prev).any(), "a weight kept at higher sparsity was pruned at lower sparsity"
        prev = keep


def test_row_mask_prunes_each_row_equally():
    w = torch.randn(5, 40)
    keep = row_mask(w, 0.25)
    assert (keep.sum(1) == 30).all()
    for r in range(5):
        assert w[r].abs()[~keep[r]].max() <= w[r].abs()[keep[r]].min()


def test_kth_threshold_two_levels_exact():
    x = torch.tensor([1.0, 1.0000001, 1.0000002, 3.0, 0.5])
    thr = kth_threshold(lambda: ((0, c) for c in iter_chunks(x)), 3, 31)
    keep = smallest_k_mask(x, 3)
    assert keep.tolist() == [False, False, True, True, False] and thr.ties == (1,)


def test_config_validation_messages():
    from llmprune.errors import LlmpruneError

    with pytest.raises(LlmpruneError, match="Did you mean 'wanda'"):
        PruneConfig(method="wandda")
    with pytest.raises(LlmpruneError, match=r"\[0, 1\)"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(LlmpruneError, match="Available: global, layer, row"):
        PruneConfig(scope="model")


def test_row_mask_equals_a_stable_sort_with_heavy_ties():
    g = torch.Generator().manual_seed(0)
    for score in (torch.randint(-3, 4, (37, 96), generator=g).float(), torch.randn(16, 50, generator=g)):
        for sparsity in (0.1, 0.5, 0.9):
            k = round(sparsity * score.shape[1])
            expected = torch.ones(score.shape, dtype=torch.bool)
            expected.scatter_(1, torch.sort(score.abs(), dim=1, stable=True).indices[:, :k], False)
            assert torch.equal(row_mask(score, sparsity), expected)
