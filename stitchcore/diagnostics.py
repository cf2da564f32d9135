"""Per-cell diagnostics beside accuracy: does a stitch hand the receiver what it would compute
itself, or does it "hack" the receiver with activations it never produces?

Accuracy alone cannot tell (Smith & Marcu 2024: colour-only and clustered-noise senders stitch at
full accuracy into a digit classifier). Computed on the test split in the same pass as the
stitched accuracy, from minibatch sums (nothing is held per sample), in float64:

- ``agreement``: the fraction of test samples on which the stitched model and the receiver
  predict the same class (functional similarity, as in Hernandez et al. 2022's comparison of
  predictions, beside accuracy);
- ``match_r2``: ``1 − Σ‖z − r‖² / Σ‖r − r̄‖²`` over test samples and every activation entry,
  where ``z`` is the stitch's output and ``r`` the receiver's own activation at the cut
  (``r̄``: its per-entry mean over the test samples). 1 is a perfect copy; 0 is no better than
  the receiver's mean activation; it may be negative;
- ``rank_stitched`` and ``rank_receiver``: effective rank (Roy & Vetterli 2007),
  ``exp(−Σ p_k ln p_k)`` with ``p_k = σ_k / Σσ`` the normalised singular values of the centred
  (samples × channels) matrix of activations pooled over positions/tokens (Smith & Marcu's rank
  analysis: a stitch that reaches full accuracy through a few directions stands out);
- ``ood_score``: how far the stitched activations lie from the receiver's own activation
  distribution at the cut: the mean Mahalanobis distance of the pooled stitched test activations
  under a Gaussian fitted to the receiver's own *training* activations (covariance shrunk
  towards ``tr(Σ)/C · I`` by 10 % so it is invertible), divided by the same mean for the
  receiver's own test activations. ≈ 1: in distribution; ≫ 1: activations the receiver never
  produces.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CellDiagnostics", "GaussianFit", "effective_rank", "pool_channels"]

SHRINKAGE = 0.1


def pool_channels(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Per-sample activations pooled to one channel vector (float64): the mean over positions
    (``nchw``/``nhwc``) or tokens; vectors as they are."""
    x = x.detach().double()
    if layout == "nchw" and x.dim() == 4:
        return x.mean(dim=(2, 3))
    if layout == "nhwc" and x.dim() == 4:
        return x.mean(dim=(1, 2))
    if layout == "tokens" and x.dim() == 3:
        return x.mean(dim=1)
    return x.flatten(1)


def effective_rank(cov: torch.Tensor) -> float:
    """Effective rank from a covariance matrix: its singular values are the squares of the
    centred data's, so ``p_k ∝ sqrt(λ_k)``."""
    eig = torch.linalg.eigvalsh(cov).clamp(min=0).sqrt()
    total = eig.sum()
    if total <= 0:
        return 0.0
    p = eig / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class _Moments:
    """Running n, Σx, Σxxᵀ of pooled vectors."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, None, None

    def add(self, v: torch.Tensor) -> None:
        v = v.double()
        if self.s is None:
            self.s = torch.zeros(v.shape[1], dtype=torch.float64, device=v.device)
            self.ss = torch.zeros(v.shape[1], v.shape[1], dtype=torch.float64, device=v.device)
        self.n += v.shape[0]
        self.s += v.sum(0)
        self.ss += v.T @ v

    def cov(self) -> torch.Tensor:
        mean = self.s / max(1, self.n)
        return (self.ss - self.n * torch.outer(mean, mean)) / max(1, self.n - 1)


class GaussianFit:
    """Mean and shrunk precision of pooled receiver activations (fitted on training samples)."""

    def __init__(self, pooled: torch.Tensor) -> None:
        m = _Moments()
        m.add(pooled)
        self.mean = m.s / m.n
        cov = m.cov()
        c = cov.shape[0]
        target = torch.eye(c, dtype=cov.dtype, device=cov.device) * (cov.trace() / c)
        shrunk = (1 - SHRINKAGE) * cov + SHRINKAGE * target
        if float(shrunk.trace()) <= 0:
            shrunk = torch.eye(c, dtype=cov.dtype, device=cov.device)
        self.precision = torch.linalg.pinv(shrunk, hermitian=True)

    def distance(self, pooled: torch.Tensor) -> torch.Tensor:
        d = pooled.double().to(self.mean.device) - self.mean
        return ((d @ self.precision) * d).sum(1).clamp(min=0).sqrt()


class CellDiagnostics:
    """Accumulates one cell's diagnostics over test batches; :meth:`result` gives the values
    (None where they cannot be computed, e.g. no classifier for agreement)."""

    def __init__(self, layout: str, gauss: GaussianFit | None = None) -> None:
        self.layout, self.gauss = layout, gauss
        self.agree, self.n_pred = 0, 0
        self.sse = 0.0
        self.r_sum = self.r_sq = None
        self.n_r = 0
        self.z_mom, self.r_mom = _Moments(), _Moments()
        self.d_z, self.d_r = 0.0, 0.0

    @torch.no_grad()
    def update(
        self,
        z: torch.Tensor,
        r: torch.Tensor | None,
        stitched_pred: torch.Tensor | None = None,
        receiver_pred: torch.Tensor | None = None,
    ) -> None:
        if stitched_pred is not None and receiver_pred is not None:
            self.agree += int((stitched_pred == receiver_pred).sum())
            self.n_pred += len(stitched_pred)
        zp = pool_channels(z, self.layout)
        self.z_mom.add(zp)
        if self.gauss is not None:
            self.d_z += float(self.gauss.distance(zp).sum())
        if r is None:
            return
        zf, rf = z.detach().double().flatten(1), r.detach().double().flatten(1)
        self.sse += float(((zf - rf) ** 2).sum())
        if self.r_sum is None:
            self.r_sum = torch.zeros(rf.shape[1], dtype=torch.float64, device=rf.device)
            self.r_sq = torch.zeros(rf.shape[1], dtype=torch.float64, device=rf.device)
        self.r_sum += rf.sum(0)
        self.r_sq += (rf**2).sum(0)
        self.n_r += rf.shape[0]
        rp = pool_channels(r, self.layout)
        self.r_mom.add(rp)
        if self.gauss is not None:
            self.d_r += float(self.gauss.distance(rp).sum())

    def result(self) -> dict:
        out: dict = {
            "agreement": self.agree / self.n_pred if self.n_pred else None,
            "match_r2": None,
            "rank_stitched": _rank(self.z_mom),
            "rank_receiver": _rank(self.r_mom),
            "ood_score": None,
        }
        if self.n_r > 1:
            sst = float((self.r_sq - self.r_sum**2 / self.n_r).sum())
            out["match_r2"] = 1.0 - self.sse / sst if sst > 0 else None
        if self.gauss is not None and self.n_r and self.d_r > 0:
            out["ood_score"] = (self.d_z / max(1, self.z_mom.n)) / (self.d_r / self.n_r)
        return {k: (None if v is None or not math.isfinite(v) else v) for k, v in out.items()}


def _rank(m: _Moments) -> float | None:
    return effective_rank(m.cov()) if m.n > 1 else None
