"""SparseGPT: one-shot pruning with an OBS weight update that compensates each pruned weight.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (2023).
For a linear layer y = W x with calibration inputs X, the layer-wise loss ||W X - W' X||^2 has Hessian
H = 2 X X^T. Columns are visited left to right; pruning (or keeping) column j leaves an error that is
spread over the columns not yet visited through the upper Cholesky factor of H^-1, so the later weights
absorb it. Columns are processed in blocks of `blocksize` (lazy batched updates). The mask is chosen once
per block from w^2 / [H^-1]_jj^2 (unstructured) or every M columns (N:M), both on the updated weights.

This module is pure maths: `HessianStats` accumulates H from input batches; `sparsegpt_prune` returns the
new weight. Everything is computed in fp32 on the weight's device.
"""
from __future__ import annotations

import logging
from itertools import accumulate

import torch

from ..errors import LlmpruneError
from .base import LayerSpec, Method
from .masks import check_finite, nm_mask, row_mask, smallest_k_mask

log = logging.getLogger(__name__)

MAX_DAMP_TRIES = 8  # percdamp 0.01 -> up to 1e5 x the mean diagonal before giving up
HESSIAN_BLOCK = 128  # rows of H per GEMM: only the blocks on or above the diagonal are computed


class HessianStats:
    """H = 2/N * sum_t x_t x_t^T over the N calibration tokens seen so far, kept as a running average in fp32.

    H is symmetric, so each batch updates only its block rows' upper parts (one GEMM per block of
    HESSIAN_BLOCK rows, about half the work of the full product); `H` mirrors them into the lower
    triangle, in place, when read.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self._H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # (in, in)
        self._mirrored = True
        self.tokens = 0

    def add_(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs (..., in); any leading dims are tokens."""
        x = x.reshape(-1, x.shape[-1]).to(self._H.device, torch.float32)  # (t, in)
        t = x.shape[0]
        if t == 0:
            return
        # Running average keeps H's scale independent of the sample count (fp32 stays well-conditioned);
        # rescale and accumulate in the same GEMMs, with no scaled copy of x.
        seen, self.tokens = self.tokens, self.tokens + t
        xt = x.T.contiguous()  # (in, t): each block's rows contiguous
        for r0 in range(0, xt.shape[0], HESSIAN_BLOCK):
            r1 = r0 + HESSIAN_BLOCK
            self._H[r0:r1, r0:].addmm_(xt[r0:r1], xt[r0:].T, beta=seen / self.tokens, alpha=2.0 / self.tokens)
        self._mirrored = False

    @property
    def H(self) -> torch.Tensor:
        """(in, in) symmetric H."""
        if not self._mirrored:
            for r0 in range(0, self._H.shape[0], HESSIAN_BLOCK):
                r1 = r0 + HESSIAN_BLOCK
                self._H[r1:, r0:r1] = self._H[r0:r1, r1:].T
            self._mirrored = True
        return self._H


def _upper_cholesky_of_inverse(H: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*I)^-1, raising damp x10 until H + damp*I is positive definite."""
    if not torch.isfinite(H).all():
        raise LlmpruneError(f"SparseGPT: the Hessian of layer '{name or '?'}' has inf/NaN entries; "
                            "the calibration activations overflowed (try --dtype float32).")
    n = H.shape[0]
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    mean_diag = float(torch.diagonal(H).mean())
    damp = percdamp * mean_diag if mean_diag > 0 else 1.0
    for attempt in range(MAX_DAMP_TRIES):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                return U
        log.warning("SparseGPT: Hessian of layer '%s' is not positive definite with dampening %.3g; "
                    "retrying with 10x more", name or "?", damp)
        damp = damp * 10 if damp > 0 else 1e-6 * max(mean_diag, 1.0)
    raise LlmpruneError(f"SparseGPT: the Hessian of layer '{name or '?'}' stayed singular after raising "
                        f"dampening to {damp / 10:.3g}; the calibration data may be degenerate.")


def _block_prune_count(sparsity: float, total: int, start: int, end: int) -> int:
    """How many of columns [start, end) to prune so that the running total is round(sparsity * cols) exactly."""
    return round(sparsity * end * total) - round(sparsity * start * total)


def sparsegpt_prune(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    pattern=None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "",
    scope: str = "layer",
    rows: list[int] | None = None,
) -> torch.Tensor:
    """New weight (weight's dtype) pruned to `sparsity` (or N:M `pattern`) with SparseGPT's OBS updates.

    weight: (out, in); H: (in, in) from `HessianStats`. `scope` "layer" prunes exactly
    round(sparsity * out * in) weights (per block of columns, as the paper); "row" prunes
    round(sparsity * in) in every row. Inputs that never fired (H_jj == 0) are pruned first: their
    removal costs nothing on the calibration data. A weight holding NaN or inf is refused, naming `name`.
    `rows`: the row counts of weights stacked into `weight` (they share H); "layer" scope then counts and
    selects within each, so each gets what it would get alone.
    """
    check_finite(name, weight)
    out_features, in_features = weight.shape
    W = weight.detach().to(torch.float32).clone()  # (out, in)
    H = H.detach().to(W.device, torch.float32).clone()  # (in, in)
    if pattern is not None:
        if in_features % pattern.m:
            raise LlmpruneError(f"Layer '{name}': input size {in_features} is not divisible by M={pattern.m} "
                                f"of the {pattern} pattern.")
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)  # groups never straddle blocks
    dead = torch.diagonal(H) == 0  # (in,)
    H[dead, dead] = 1.0
    U = _upper_cholesky_of_inverse(H, percdamp, name)  # (in, in), upper
    d_all = torch.diagonal(U)  # (in,)
    ends = list(accumulate(rows or [out_features]))
    spans = list(zip([0] + ends[:-1], ends))  # each stacked weight's rows

    for i1 in range(0, in_features, blocksize):
        i2 = min(i1 + blocksize, in_features)
        # Work on the block transposed, (b, out): each column of W is a contiguous row here.
        Wt = W[:, i1:i2].T.contiguous()  # (b, out)
        U1 = U[i1:i2, i1:i2]  # (b, b)
        d = d_all[i1:i2]  # (b,)
        dead1 = dead[i1:i2]
        Errt = torch.empty_like(Wt)
        if pattern is None:
            score = (Wt.T / d).square().masked_fill(dead1, 0.0).cpu()  # (out, b): OBS saliency w^2 / [Hinv]_jj^2
            if scope == "row":
                k = _block_prune_count(sparsity, 1, i1, i2)
                keep = row_mask(score, k / (i2 - i1)) if k else torch.ones(score.shape, dtype=torch.bool)
            else:
                keep = torch.cat([smallest_k_mask(score[r0:r1], _block_prune_count(sparsity, r1 - r0, i1, i2))
                                  for r0, r1 in spans])
            prune_t = (~keep).T.contiguous().to(W.device)  # (b, out)
        else:
            prune_t = torch.zeros(Wt.shape, dtype=torch.bool, device=W.device)
        # err_i = (w_i - q_i) / d_i is w_i / d_i where pruned and w_i / inf = 0 where kept: one op per column.
        inf = torch.tensor(torch.inf, device=W.device)
        denom = torch.where(prune_t, d.unsqueeze(1), inf)  # (b, out)
        w_rows, den_rows, err_rows = Wt.unbind(0), denom.unbind(0), Errt.unbind(0)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                g = slice(i, i + pattern.m)
                score = (Wt[g].T / d[g]).square().masked_fill(dead1[g], 0.0)  # (out, m)
                prune_t[g] = ~nm_mask(score.cpu(), pattern.n, pattern.m).T.to(W.device)
                torch.where(prune_t[g], d[g].unsqueeze(1), inf, out=denom[g])
            torch.div(w_rows[i], den_rows[i], out=err_rows[i])
            Wt[i + 1:].addr_(U1[i, i + 1:], err_rows[i], alpha=-1.0)  # spread the error over the block's later columns
        # Column i of Wt is final once visited (later columns only update those after them): keep it or zero it.
        W[:, i1:i2] = Wt.masked_fill_(prune_t, 0.0).T
        W[:, i2:].addmm_(Errt.T, U[i1:i2, i2:], alpha=-1.0)
    return W.to(weight.dtype)


def prune(weight: torch.Tensor, stats: HessianStats, spec: LayerSpec) -> torch.Tensor:
    """The registry's entry point: `sparsegpt_prune` with the layer's Hessian and spec."""
    return sparsegpt_prune(weight, stats.H, spec.sparsity, pattern=spec.pattern, name=spec.name, scope=spec.scope)


def prune_shared(weights: list[torch.Tensor], stats: HessianStats, specs: list[LayerSpec]) -> list[torch.Tensor]:
    """Weights that read the same inputs share H and its factorisation: one solve over their stacked rows
    (fewer, larger steps than one solve each), every weight pruned as alone. Specs differ only by name."""
    for w, spec in zip(weights, specs):
        check_finite(spec.name, w)
    rows = [w.shape[0] for w in weights]
    spec = specs[0]
    out = sparsegpt_prune(torch.cat(weights), stats.H, spec.sparsity, pattern=spec.pattern, scope=spec.scope,
                          name=" + ".join(s.name for s in specs), rows=rows)
    return list(out.split(rows))


METHOD = Method("sparsegpt", "OBS weight updates from the inputs' Hessian (Frantar & Alistarh 2023)", "hessian", prune,
                scopes=("layer", "row"), prune_shared=prune_shared)
