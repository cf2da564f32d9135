"""Least squares with a bias term: the closed-form fit behind ``--init lstsq``.

Stitch families fit ``y ≈ W x + b`` on paired activations (Csiszárik et al.'s direct matching,
the ``ps_inv`` init of SN-Net and drfrankenstein). Activations come in large batches of
positions (pixels × samples), and a strided conv sees patches several times wider than its
input, so the fit does not hold a design matrix once it has more rows than features:
:class:`LeastSquares` accumulates the centred normal equations chunk by chunk (products in the
input's precision, sums in float64) and solves them once. Centring removes the bias from the
linear system (``b = ȳ - W x̄``) and keeps it well conditioned. A ridge term is added when the
caller asks for one (relative to the input's variance, so it means the same at any scale) and,
as a fallback, whenever the covariance is (numerically) singular, e.g. fewer rows than features
or duplicated channels, where plain normal equations would blow up.

Wide problems (no more rows than features, e.g. a strided conv whose kernel covers a whole
16×16 map: 16,384 inputs from 2,048 samples) are solved in the dual instead: the rows are kept
(never more memory than the d × d sums would take) and the ridge solution is
``Wᵀ = Xᵀ (X Xᵀ / n + αI)⁻¹ Y / n``, an n × n system rather than a d × d one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Condition number above which the fit falls back to ridge regression.
MAX_CONDITION = 1e8
#: Default chunk of rows turned into float64 at a time by :func:`lstsq_with_bias`.
CHUNK_ROWS = 65536


@dataclass(frozen=True)
class AffineFit:
    """The solution of ``y ≈ x @ weight.T + bias`` and what a stitch needs to realise it.

    weight: ``(d_out, d_in)`` float64; bias: ``(d_out,)`` float64.
    ridge: the absolute ridge added to the input covariance (0.0 for an exact solve).
    linear_mean, linear_var: per-output mean and (biased) variance of ``x @ weight.T`` over the
    fitted rows, *without* the bias. A BatchNorm placed after the linear map uses them as running
    statistics so that the fitted map holds in train mode (batch statistics) and eval mode alike.
    rows: number of rows fitted.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    ridge: float
    linear_mean: torch.Tensor
    linear_var: torch.Tensor
    rows: int

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` in ``x``'s dtype (for checking a fit)."""
        return x @ self.weight.to(x.dtype).T + self.bias.to(x.dtype)


class LeastSquares:
    """Accumulates the centred normal equations of ``y ≈ W x + b`` over chunks of rows.

    Rows are shifted by the first chunk's means before they are summed, so the float64 sums do
    not lose the covariance to cancellation when activations have a large offset.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._shift_x: torch.Tensor | None = None
        self._shift_y: torch.Tensor | None = None
        self._sx = self._sy = self._sxx = self._sxy = None
        # rows kept while there are no more of them than features (see _solve_dual)
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (n, d_in) paired with ``y`` (n, d_out)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected paired 2-D rows, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] == 0:
            return
        x = x.detach()
        y = y.detach()
        if self._shift_x is None:
            self._shift_x = x.to(torch.float64).mean(0)
            self._shift_y = y.to(torch.float64).mean(0)
        # shifted in float64, multiplied in the input's precision (float32 GEMMs are 2-4x
        # faster on a CPU; a chunk's products are summed into float64)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = (x.to(torch.float64) - self._shift_x).to(dtype)
        y = (y.to(torch.float64) - self._shift_y).to(dtype)
        self.rows += x.shape[0]
        if self._kept is not None:
            self._kept.append((x, y))
            if self.rows <= x.shape[1]:
                return
            kept, self._kept = self._kept, None  # tall problem: from now on only the sums
            x, y = torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])
        if self._sxx is None:
            d_in, d_out = x.shape[1], y.shape[1]
            f64, dev = torch.float64, x.device
            self._sx = torch.zeros(d_in, dtype=f64, device=dev)
            self._sy = torch.zeros(d_out, dtype=f64, device=dev)
            self._sxx = torch.zeros(d_in, d_in, dtype=f64, device=dev)
            self._sxy = torch.zeros(d_in, d_out, dtype=f64, device=dev)
        self._sx += x.sum(0, dtype=torch.float64)
        self._sy += y.sum(0, dtype=torch.float64)
        self._sxx += (x.T @ x).to(torch.float64)
        self._sxy += (x.T @ y).to(torch.float64)

    def solve(self, ridge: float = 0.0, max_condition: float = MAX_CONDITION) -> AffineFit:
        """Solve for ``W`` and ``b``.

        ``ridge`` is relative to the mean input variance (scale-free): ``0.0`` asks for the exact
        solution, a small positive value (e.g. ``1e-4``) shrinks directions the data barely
        determines. Whatever is asked, a covariance that is still (numerically) singular gets
        ``mean variance / max_condition`` added to its diagonal instead of failing.
        """
        if self.rows == 0:
            raise ValueError("no rows to fit")
        if ridge < 0:
            raise ValueError(f"ridge must be ≥ 0, got {ridge}")
        if self._kept is not None:
            return self._solve_dual(ridge, max_condition)
        n = self.rows
        mx, my = self._sx / n, self._sy / n
        cov_xx = self._sxx / n - torch.outer(mx, mx)
        cov_xy = self._sxy / n - torch.outer(mx, my)
        cov_xx = (cov_xx + cov_xx.T) / 2
        d = cov_xx.shape[0]
        scale = float(cov_xx.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny))
        eye = torch.eye(d, dtype=torch.float64, device=cov_xx.device)
        alpha = float(ridge) * scale
        floor = scale / max_condition
        if alpha < floor and not _well_conditioned(cov_xx + alpha * eye, scale, max_condition):
            alpha = floor
        weight_t = _spd_solve(cov_xx + alpha * eye, cov_xy)  # (d_in, d_out)
        weight = weight_t.T.contiguous()
        mean_x = mx + self._shift_x
        mean_y = my + self._shift_y
        bias = mean_y - weight @ mean_x
        linear_mean = weight @ mean_x
        linear_var = torch.einsum("oi,ij,oj->o", weight, cov_xx, weight).clamp_min(0.0)
        return AffineFit(weight, bias, alpha, linear_mean, linear_var, n)

    def _solve_dual(self, ridge: float, max_condition: float) -> AffineFit:
        """The same ridge solution from the n × n Gram matrix (n ≤ d: the covariance is singular,
        so the ridge is at least the fallback floor, as in :meth:`solve`). Products in the rows'
        precision (as for the sums of the primal), the n × n solve in float64."""
        f64 = torch.float64
        x = torch.cat([k[0] for k in self._kept])
        y = torch.cat([k[1] for k in self._kept]).to(f64)
        n, d = x.shape
        mx, my = x.mean(0, dtype=f64), y.mean(0)
        x, y = (x.to(f64) - mx).to(x.dtype), y - my
        scale = max(float(x.pow(2).sum(dtype=f64)) / (n * d), torch.finfo(f64).tiny)
        alpha = max(float(ridge) * scale, scale / max_condition)
        gram = (x @ x.T).to(f64) / n + alpha * torch.eye(n, dtype=f64, device=x.device)
        dual = _spd_solve(gram, y / n).to(x.dtype)
        weight = (x.T @ dual).to(f64).T.contiguous()  # (d_out, d_in)
        mean_x, mean_y = mx + self._shift_x, my + self._shift_y
        z = (x @ weight.T.to(x.dtype)).to(f64)
        return AffineFit(
            weight, mean_y - weight @ mean_x, alpha, weight @ mean_x, z.pow(2).mean(0), n
        )


def _well_conditioned(cov: torch.Tensor, scale: float, max_condition: float) -> bool:
    """Cheap test: a Cholesky factor exists and its smallest pivot is not tiny.

    ``min(diag(L))²`` is an upper bound of the smallest eigenvalue, so a small pivot proves the
    matrix is nearly singular; a large one is taken as good enough (exact condition numbers cost
    an eigendecomposition).
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        return False
    return float(chol.diagonal().min()) ** 2 >= scale / max_condition


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    # Not positive definite even with the ridge floor (rounding on a huge, degenerate problem).
    return torch.linalg.lstsq(a, b, driver="gelsd").solution


def lstsq_with_bias(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ridge: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
) -> AffineFit:
    """Fit ``y ≈ x @ W.T + b`` on 2-D row matrices (float64 inside; ``ridge`` relative to the
    mean input variance, with a fallback for singular problems, see LeastSquares.solve)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected paired 2-D rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    ls = LeastSquares()
    for start in range(0, x.shape[0], chunk_rows):
        ls.add(x[start : start + chunk_rows], y[start : start + chunk_rows])
    return ls.solve(ridge=ridge)


__all__ = ["AffineFit", "LeastSquares", "MAX_CONDITION", "lstsq_with_bias"]
