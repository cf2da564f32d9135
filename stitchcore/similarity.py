"""Linear CKA: a training-free, side-by-side similarity to set beside stitching results.

Stitching asks "can B's top *use* A's representation?"; centred kernel alignment asks "do A and B
represent the same samples alike, up to rotation and scale?". Bansal et al. (2021) show the two
can disagree, so a stitching matrix is reported with the CKA matrix of the same cut pairs.

Definitions (Kornblith et al. 2019; Song et al. 2012; Nguyen et al. 2021). With linear Gram
matrices ``K = X Xᵀ`` and ``L = Y Yᵀ`` over n samples::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))

* biased HSIC:   ``tr(K H L H) / (n - 1)²`` with the centring matrix ``H = I - 11ᵀ/n``;
* unbiased HSIC (Song et al. 2012), with K̃, L̃ the Gram matrices with zeroed diagonals::

      [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))

  It needs n > 3. It removes the upward bias that makes biased CKA of unrelated
  high-dimensional features far from 0 on small samples.

The minibatch estimator (Nguyen et al. 2021, used by Bansal et al.) averages the unbiased HSIC
terms over batches *before* taking the ratio, so activations never have to be held in memory:
each batch contributes three small sums per cut pair, computed from one Gram matrix per cut.
Everything is computed in float64: Gram entries of wide layers are large, and the unbiased
estimator subtracts terms of similar size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: The unbiased HSIC estimator divides by n(n-3)(n-2)(n-1): batches of 3 or fewer are unusable.
MIN_BATCH = 4


def _as_matrix(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Samples × features in float64, centred: per-sample activations of any rank flattened.

    Centring does not change linear CKA (HSIC only sees centred features), but it keeps the
    Gram entries small, which matters for the cancellations in the unbiased estimator.
    """
    t = torch.as_tensor(x)
    if t.dim() < 1:
        raise ValueError("activations need a leading sample dimension")
    t = t.detach().reshape(t.shape[0], -1).to(torch.float64)
    return t - t.mean(dim=0, keepdim=True)


def _gram(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    m = _as_matrix(x)
    return m @ m.T


def _ratio(cross: torch.Tensor, self_a: torch.Tensor, self_b: torch.Tensor) -> torch.Tensor:
    """HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L)), NaN where a self term is not positive.

    A non-positive self term means a constant (zero-variance) representation, or a debiased
    estimate on too few samples: CKA is undefined there, and NaN says so instead of a number.
    """
    denom = self_a.unsqueeze(-1) * self_b.unsqueeze(-2)
    ok = denom > 0
    out = torch.full_like(cross, float("nan"))
    out[ok] = cross[ok] / denom[ok].sqrt()
    return out


def _unbiased_terms(
    grams_a: torch.Tensor, grams_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased HSIC for every pair of a stack of Gram matrices [m_a, n, n] × [m_b, n, n].

    Returns (cross [m_a, m_b], self_a [m_a], self_b [m_b]). The estimator is written with
    three reductions per Gram matrix (entry sum, row sums, the flattened matrix) so the cross
    terms of all pairs come from two matrix products instead of a loop over pairs.
    """
    n = grams_a.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=grams_a.device)
    ka = grams_a.masked_fill(eye, 0.0)
    kb = grams_b.masked_fill(eye, 0.0)
    flat_a, flat_b = ka.reshape(ka.shape[0], -1), kb.reshape(kb.shape[0], -1)
    rows_a, rows_b = ka.sum(dim=-1), kb.sum(dim=-1)  # K̃1, symmetric so also 1ᵀK̃
    tot_a, tot_b = rows_a.sum(dim=-1), rows_b.sum(dim=-1)  # 1ᵀK̃1
    scale = 1.0 / (n * (n - 3))
    c1 = 1.0 / ((n - 1) * (n - 2))
    c2 = 2.0 / (n - 2)

    def hsic(fa, fb, ra, rb, ta, tb):
        return scale * (fa @ fb.T + c1 * torch.outer(ta, tb) - c2 * (ra @ rb.T))

    cross = hsic(flat_a, flat_b, rows_a, rows_b, tot_a, tot_b)
    self_a = scale * ((flat_a * flat_a).sum(-1) + c1 * tot_a**2 - c2 * (rows_a * rows_a).sum(-1))
    self_b = scale * ((flat_b * flat_b).sum(-1) + c1 * tot_b**2 - c2 * (rows_b * rows_b).sum(-1))
    return cross, self_a, self_b


def linear_cka(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, debiased: bool = True
) -> float:
    """Full-batch linear CKA between activations ``x`` (n × …) and ``y`` (n × …), same samples.

    ``debiased=True`` uses the unbiased HSIC estimator (needs n > 3): near 0 for unrelated
    features even when they are wider than the sample. ``debiased=False`` is the original
    (biased) CKA of Kornblith et al. Returns NaN when a representation is constant.
    """
    gx, gy = _gram(x), _gram(y)
    n = gx.shape[0]
    if gy.shape[0] != n:
        raise ValueError(f"x has {n} samples but y has {gy.shape[0]}: CKA needs the same samples")
    if debiased:
        if n < MIN_BATCH:
            raise ValueError(f"debiased CKA needs at least {MIN_BATCH} samples, got {n}")
        cross, sa, sb = _unbiased_terms(gx.unsqueeze(0), gy.unsqueeze(0))
    else:
        # Features are already centred, so the Gram matrices are H K H and H L H.
        cross = (gx * gy).sum().reshape(1, 1)
        sa, sb = (gx * gx).sum().reshape(1), (gy * gy).sum().reshape(1)
    return float(_ratio(cross, sa, sb)[0, 0])


class MinibatchCKA:
    """Minibatch linear CKA between every sender cut and every receiver cut (Nguyen et al. 2021).

    Call :meth:`update` once per batch with the activations of all ``n_a`` sender cuts and all
    ``n_b`` receiver cuts on the same samples; :meth:`result` gives the ``[n_a, n_b]`` matrix::

        CKA_ij = Σ_batches HSIC₁(K_i, L_j) / sqrt(Σ HSIC₁(K_i, K_i) · Σ HSIC₁(L_j, L_j))

    Only the running sums are kept (``n_a·n_b + n_a + n_b`` numbers), never activations, so
    it runs alongside stitch training at no memory cost. Each cut's Gram matrix is computed
    once per batch. Batches with fewer than 4 samples are skipped (counted in ``skipped``).
    The estimate depends on the batch size (the unbiased terms are averaged, not pooled); use
    the same batch size when comparing matrices.
    """

    def __init__(self, n_a: int, n_b: int) -> None:
        if n_a < 1 or n_b < 1:
            raise ValueError(f"need at least one cut on each side, got {n_a} and {n_b}")
        self.n_a, self.n_b = n_a, n_b
        self.cross = np.zeros((n_a, n_b), dtype=np.float64)
        self.self_a = np.zeros(n_a, dtype=np.float64)
        self.self_b = np.zeros(n_b, dtype=np.float64)
        self.batches = 0
        self.samples = 0
        self.skipped = 0

    def update(
        self,
        feats_a: Sequence[torch.Tensor | np.ndarray],
        feats_b: Sequence[torch.Tensor | np.ndarray],
    ) -> None:
        """Add one batch: ``feats_a[i]`` is sender cut i's activation, ``feats_b[j]`` receiver
        cut j's, each with the batch as leading dimension (any further shape)."""
        if len(feats_a) != self.n_a or len(feats_b) != self.n_b:
            raise ValueError(
                f"expected {self.n_a} sender and {self.n_b} receiver activations, "
                f"got {len(feats_a)} and {len(feats_b)}"
            )
        sizes = {int(f.shape[0]) for f in [*feats_a, *feats_b]}
        if len(sizes) != 1:
            raise ValueError(f"activations of one batch must share the batch size, got {sizes}")
        (n,) = sizes
        if n < MIN_BATCH:
            self.skipped += 1
            return
        with torch.no_grad():
            grams_a = torch.stack([_gram(f) for f in feats_a])
            grams_b = torch.stack([_gram(f) for f in feats_b]).to(grams_a.device)
            cross, sa, sb = _unbiased_terms(grams_a, grams_b)
        self.cross += cross.cpu().numpy()
        self.self_a += sa.cpu().numpy()
        self.self_b += sb.cpu().numpy()
        self.batches += 1
        self.samples += n

    def result(self) -> np.ndarray:
        """``[n_a, n_b]`` CKA values; all NaN before any usable batch, NaN for constant cuts."""
        if self.batches == 0:
            return np.full((self.n_a, self.n_b), np.nan)
        out = _ratio(
            torch.from_numpy(self.cross),
            torch.from_numpy(self.self_a),
            torch.from_numpy(self.self_b),
        )
        return out.numpy()


__all__ = [
    "MIN_BATCH",
    "MinibatchCKA",
    "linear_cka",
]
