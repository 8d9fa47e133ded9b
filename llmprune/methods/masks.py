"""Keep-masks from scores: exact k-smallest selection (global, per matrix, per row) and N:M groups.

Pure tensor maths shared by every method. Masks are keep-masks (True = kept). Scores are compared by
magnitude: a 16-bit float's |x| orders exactly like the integer of its low 15 bits, and an fp32's like its
low 31 bits, so the exact k-th smallest score is found with integer histograms instead of a sort, and in a
streaming pass over many tensors without ever concatenating them. Ties at the threshold are pruned in visit
order (tensor order, then row-major index), which makes the count of zeros exactly k and masks nested.
NaN and inf have keys above every finite value, so the same histograms show, for free, whether a tensor
holds any: those are refused (`check_finite`), since no threshold over them means anything.
"""
from __future__ import annotations

import sys

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from ..errors import LlmpruneError
from . import fast

CHUNK = 1 << 22  # elements per chunk when building keys; bounds temporaries to ~40 MB

_KEY_BITS = {torch.float16: 15, torch.bfloat16: 15, torch.float32: 31}
# First bin of the 15-bit high-key histogram holding NaN/inf (every exponent bit set); fp32 is keyed by its high half.
_NONFINITE_BIN = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F80}


def nonfinite_error(name: str | None) -> LlmpruneError:
    """The one-line refusal of a weight holding NaN or inf ("" an unnamed weight; None: scores, not a weight)."""
    if name is None:
        return LlmpruneError("The pruning scores hold NaN or inf values: the weights or the calibration activations "
                             "are not finite (try --dtype float32); llmprune prunes finite values only.")
    what = f"Weight '{name}'" if name else "A weight"
    return LlmpruneError(f"{what} holds NaN or inf values; llmprune prunes finite weights only: "
                         f"repair the checkpoint or exclude the tensor with --exclude.")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise the `nonfinite_error` naming `name` when the floating-point `tensor` holds NaN or inf."""
    if not tensor.is_floating_point():
        return
    for chunk in iter_chunks(tensor):  # bounded temporaries
        if not bool(torch.isfinite(chunk).all()):
            raise nonfinite_error(name)


def key_bits(dtype: torch.dtype) -> int:
    """Bits of the order-preserving integer key of |x| for this dtype (float64 is scored as float32)."""
    return _KEY_BITS.get(dtype, 31)


def magnitude_keys(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer keys (same shape; int16 for 15 bits, int32 for 31) whose order equals the order of |x|.

    With bits=31 every dtype is first widened to fp32 (exact for fp16/bf16), so tensors of mixed dtypes
    share one key space.
    """
    if bits == 15 and x.dtype in (torch.float16, torch.bfloat16):
        return x.view(torch.int16) & 0x7FFF
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.view(torch.int32) & 0x7FFFFFFF


def iter_chunks(x: torch.Tensor) -> Iterable[torch.Tensor]:
    """x flattened (row-major) in chunks of at most CHUNK elements."""
    flat = x.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK]


def _high_keys(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The top 15 bits of the key of |x| as int16: for fp32 the sign-cleared high half-word, read in place."""
    if bits == 15:
        return magnitude_keys(x, bits)
    x = x if x.dtype == torch.float32 else x.to(torch.float32)
    return x.view(torch.int16)[1::2] & 0x7FFF  # little-endian: odd half-words hold sign, exponent, top mantissa


@dataclass(frozen=True)
class Threshold:
    """Prune every key < `key`, plus `ties[i]` elements of key == `key` (the first, row-major) of tensor i."""

    key: int
    ties: tuple[int, ...]


def kth_threshold(iter_values: Callable[[], Iterable[tuple[int, torch.Tensor]]], k: int, bits: int,
                  count: int = 1, names: Sequence[str] | None = None) -> Threshold:
    """Exact threshold pruning the k smallest |values| among `count` tensors (see `kth_thresholds`)."""
    return kth_thresholds(iter_values, [k], bits, count, names)[0]


def kth_thresholds(iter_values: Callable[[], Iterable[tuple[int, torch.Tensor]]], ks: Sequence[int], bits: int,
                   count: int = 1, names: Sequence[str] | None = None) -> list[Threshold]:
    """Exact thresholds pruning the k smallest |values| among `count` tensors, for every k in `ks` at once.

    `iter_values()` yields (tensor index, flat chunk). 15-bit keys need one pass (a 32,768-bin histogram);
    31-bit keys two: the high 15 bits, then the low 16 bits of the values inside the bins holding a
    threshold. Ties at a threshold go to tensors in index order, so masks do not depend on the order they
    are made in, and the masks of increasing k are nested. With `names` (the values are weights), a tensor
    holding NaN or inf is refused with an error naming `names[i]`, read off the histogram's top bins for free.
    """
    assert sys.byteorder == "little"
    out: list[Threshold | None] = [Threshold(key=-1, ties=(0,) * count) if k <= 0 else None for k in ks]
    live = [j for j, k in enumerate(ks) if k > 0]
    if not live:
        return out  # type: ignore[return-value]
    per_tensor = torch.zeros(count, 1 << 15, dtype=torch.int32) if bits == 15 else None
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for i, x in iter_values():
        if bits == 31 and x.dtype != torch.float32:
            x = x.to(torch.float32)  # mixed dtypes share the fp32 key space
        h = fast.hist_high15(x, bits)
        if h is None:
            h = torch.bincount(_high_keys(x, bits), minlength=1 << 15).cpu()
        if names is not None and int(h[_NONFINITE_BIN.get(x.dtype, 0x7F80):].sum()):
            raise nonfinite_error(names[i])
        hist += h
        if per_tensor is not None:
            per_tensor[i] += h.to(torch.int32)
    cum = hist.cumsum(0)
    total = int(cum[-1])
    his, belows = {}, {}
    for j in live:
        if ks[j] > total:
            raise ValueError(f"cannot prune {ks[j]} of {total} weights")
        hi = int(torch.searchsorted(cum, torch.tensor(ks[j])))  # first bin whose cumulative count reaches k
        his[j], belows[j] = hi, int(cum[hi - 1]) if hi > 0 else 0
    if bits == 15:
        for j in live:
            out[j] = _split_ties(his[j], per_tensor[:, his[j]].tolist(), ks[j] - belows[j])
        return out  # type: ignore[return-value]

    # fp32: the low 16 bits of the values inside the bins holding a threshold, coded (bin slot << 16 | low).
    bins = sorted(set(his.values()))
    slot_of = torch.full((1 << 15,), -1, dtype=torch.int64)
    slot_of[torch.tensor(bins)] = torch.arange(len(bins))
    slot32 = slot_of.to(torch.int32)
    low = torch.zeros(len(bins) << 16, dtype=torch.int64)
    inside: dict[int, list[torch.Tensor]] = {}
    for i, x in iter_values():
        x = x if x.dtype == torch.float32 else x.to(torch.float32)
        done = fast.hist_low16(x, slot32, bins)
        if done is not None:
            low += done[0]
            if done[1].numel():
                inside.setdefault(i, []).append(done[1])
            continue
        halves = x.view(torch.int16)
        slot = slot_of[(halves[1::2] & 0x7FFF).to(torch.int32)]
        sel = slot >= 0
        codes = (slot[sel] << 16) | (halves[0::2][sel].to(torch.int64) & 0xFFFF)
        if codes.numel():
            low += torch.bincount(codes, minlength=low.numel()).cpu()
            inside.setdefault(i, []).append(codes)
    codes_of = {i: torch.cat(v) for i, v in inside.items()}
    for j in live:
        s = bins.index(his[j])
        cum_low = low[s << 16:(s + 1) << 16].cumsum(0)
        lo = int(torch.searchsorted(cum_low, torch.tensor(ks[j] - belows[j])))
        below = belows[j] + (int(cum_low[lo - 1]) if lo > 0 else 0)
        code = (s << 16) | lo
        at_key = [int((codes_of[i] == code).sum()) if i in codes_of else 0 for i in range(count)]
        out[j] = _split_ties((his[j] << 16) | lo, at_key, ks[j] - below)
    return out  # type: ignore[return-value]


def _split_ties(key: int, at_key: list[int], left: int) -> Threshold:
    ties = []
    for n in at_key:  # ties go to tensors in index order, so masks do not depend on the order they are made in
        ties.append(min(left, n))
        left -= ties[-1]
    return Threshold(key=key, ties=tuple(ties))


def threshold_mask(x: torch.Tensor, key: int, ties: int, bits: int) -> torch.Tensor:
    """Keep-mask of x: prune keys < `key` and the first `ties` elements (row-major) with key == `key`."""
    keep = fast.keep_mask(x, key, ties, bits)
    if keep is not None:
        return keep
    keep = torch.empty(x.shape, dtype=torch.bool)
    flat = keep.view(-1)
    start = 0
    for chunk in iter_chunks(x):
        keys = magnitude_keys(chunk, bits)
        part = flat[start : start + keys.numel()]
        if ties > 0:
            torch.gt(keys, key, out=part)
            tied = torch.nonzero(keys == key).view(-1)
            used = min(ties, tied.numel())
            part[tied[used:]] = True
            ties -= used
        else:
            torch.ge(keys, key, out=part)
        start += keys.numel()
    return keep


def apply_threshold_(x: torch.Tensor, key: int, ties: int, bits: int) -> tuple[int, int]:
    """Zero in place what `threshold_mask(x, key, ties, bits)` prunes; returns (zeros before, zeros after).

    One fused pass when the C kernel runs x's dtype (fp16/bf16 with 15-bit keys, fp32 with 31); else torch.
    """
    counts = fast.apply_threshold_(x, key, ties, bits)
    if counts is not None:
        return counts
    before = x.numel() - int(torch.count_nonzero(x))
    x.masked_fill_(threshold_mask(x, key, ties, bits).logical_not_(), 0)
    return before, x.numel() - int(torch.count_nonzero(x))


def smallest_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning exactly the k smallest |score| of one tensor (ties: lower index pruned first)."""
    bits = key_bits(score.dtype)
    thr = kth_threshold(lambda: ((0, c) for c in iter_chunks(score)), k, bits)
    return threshold_mask(score, thr.key, thr.ties[0], bits)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning round(sparsity * in) smallest |score| in every row of a (out, in) tensor.

    The same mask as pruning the first k of a stable sort of each row (ties: lower index pruned first), from
    a selection instead of a sort: the k-th smallest value per row, everything below it, and as many of the
    values equal to it as are still needed, in index order.
    """
    out_features, in_features = score.shape
    k = round(sparsity * in_features)
    keep = torch.ones(score.shape, dtype=torch.bool)
    if k == 0:
        return keep
    rows = max(1, CHUNK // max(in_features, 1))
    for r in range(0, out_features, rows):
        s = score[r : r + rows].abs().float()  # (rows, in)
        kth = torch.kthvalue(s, k, dim=1, keepdim=True).values  # (rows, 1)
        below, tied = s < kth, s == kth
        ties_pruned = k - below.sum(dim=1, keepdim=True)  # (rows, 1), >= 1
        keep[r : r + rows] = ~(below | (tied & (tied.cumsum(dim=1) <= ties_pruned)))
    return keep


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the n largest |score| in every m consecutive inputs of each row (ties: earlier kept).

    score: (out, in) with in divisible by m.
    """
    out_features, in_features = score.shape
    if in_features % m:
        raise ValueError(f"input size {in_features} is not divisible by M={m}")
    groups = score.abs().float().reshape(-1, m)  # (out * in / m, m)
    top = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool)
    keep.scatter_(1, top, True)
    return keep.view(out_features, in_features)


def mask_for(score: torch.Tensor, sparsity: float, scope: str = "layer", pattern=None) -> torch.Tensor:
    """Keep-mask of one (out, in) score tensor: N:M when `pattern` is given, else per `scope` (layer|row)."""
    if pattern is not None:
        return nm_mask(score, pattern.n, pattern.m)
    if scope == "row":
        return row_mask(score, sparsity)
    return smallest_k_mask(score, round(sparsity * score.numel()))


def satisfies_nm(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every m consecutive inputs of each row of w (out, in) hold at most n nonzeros."""
    if w.dim() != 2 or w.shape[1] % m:
        return False
    return bool(((w.reshape(-1, m) != 0).sum(1) <= n).all())
