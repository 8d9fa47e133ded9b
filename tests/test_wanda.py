"""Wanda: hand-computed scores and masks, statistics independent of batching, N:M groups."""
import torch

from llmprune.config import NMPattern
from llmprune.methods.wanda import ActNormStats, wanda_mask, wanda_prune, wanda_score


def test_score_hand_computed():
    W = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, 2.0, 1.0]])
    act = torch.tensor([16.0, 1.0, 1.0, 0.25])  # norms 4, 1, 1, 0.5
    assert torch.equal(wanda_score(W, act), torch.tensor([[4.0, 2.0, 3.0, 2.0], [16.0, 3.0, 2.0, 0.5]]))
    keep = wanda_mask(W, act, 0.5)  # per row: two smallest scores pruned, ties -> lower index first
    assert keep.tolist() == [[True, False, True, False], [True, True, False, False]]
    # magnitude alone would keep columns 2, 3 of row 0: the activations changed the decision
    assert torch.equal(wanda_prune(W, act, 0.5), torch.tensor([[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]))


def test_nm_hand_computed():
    W = torch.tensor([[8.0, 1.0, 1.0, 8.0, 1.0, 2.0, 3.0, 4.0]])
    act = torch.tensor([1.0, 100.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # norms 1, 10, 1, 0, 1, 1, 1, 1
    keep = wanda_mask(W, act, 0.5, pattern=NMPattern(2, 4))  # scores 8 10 1 0 | 1 2 3 4
    assert keep.tolist() == [[True, True, False, False, False, False, True, True]]


def test_stats_independent_of_batching():
    torch.manual_seed(0)
    x = torch.randn(4, 33, 16, dtype=torch.bfloat16)
    a, b = ActNormStats(16), ActNormStats(16)
    a.add_(x)
    for part in x.reshape(-1, 16).split(7):
        b.add_(part)
    assert a.tokens == b.tokens == 132
    assert torch.allclose(a.sum_sq, b.sum_sq, rtol=1e-6)
    assert a.sum_sq.dtype == torch.float32
    assert torch.allclose(a.sum_sq, x.float().reshape(-1, 16).norm(dim=0) ** 2, rtol=1e-5)


def test_exact_row_sparsity_and_nm_everywhere():
    torch.manual_seed(1)
    W = torch.randn(32, 64, dtype=torch.float16)
    act = torch.rand(64)
    out = wanda_prune(W, act, 0.3)
    assert out.dtype == torch.float16
    assert ((out == 0).sum(dim=1) == round(0.3 * 64)).all()
    nm = wanda_prune(W, act, 0.5, pattern=NMPattern(2, 4))
    assert ((nm != 0).reshape(-1, 4).sum(dim=1) <= 2).all()
