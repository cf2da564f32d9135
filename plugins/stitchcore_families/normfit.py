"""Closed-form settings for the BatchNorm → linear map → BatchNorm sandwich.

Stitches are trained in train mode (BatchNorm normalises with the batch's statistics) and
evaluated in eval mode (running statistics). A fitted map ``y = W x + b`` must therefore hold in
both modes, which these helpers arrange:

- input BatchNorm: running mean/var = the sender's per-channel mean and (biased) variance,
  weight 1, bias 0, so both modes compute the same ``x̂ = (x - μ) / σ``;
- linear map (no bias): ``z = W x̂``, with ``W`` fitted by least squares on ``x̂``;
- output BatchNorm: running mean/var = the mean/variance of ``z`` over the fitted data, weight
  = ``sqrt(var + eps)``, bias = ``mean + b``; eval mode returns ``z + b`` exactly and train mode
  returns it up to the gap between a batch's statistics and the sample's.

An identity stitch is the same sandwich with ``W = diag(σ)`` and ``b = μ``. Without data it can
only be made exact in eval mode, so such a stitch is marked *pending* and calibrates its
statistics on the first batch it sees in train mode (data-dependent initialisation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from stitchcore.plugin import AffineFit


def channel_moments(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (what BatchNorm uses in train mode), float64."""
    x = x.detach().to(torch.float64).transpose(0, dim).reshape(x.shape[dim], -1)
    return x.mean(1), x.var(1, unbiased=False)


def normalise(x: torch.Tensor, bn: nn.Module, dim: int = 1) -> torch.Tensor:
    """``bn`` applied with its running statistics (eval mode) whatever its current mode.

    Identity (no BatchNorm) passes ``x`` through.
    """
    if not isinstance(bn, _BatchNorm):
        return x
    shape = [1] * x.dim()
    shape[dim] = -1

    def stat(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=x.device, dtype=x.dtype).view(shape)

    std = (stat(bn.running_var) + bn.eps).sqrt()
    return (x - stat(bn.running_mean)) / std * stat(bn.weight) + stat(bn.bias)


def standardise(x: torch.Tensor, bn: _BatchNorm) -> torch.Tensor:
    """``bn``'s normalisation alone, its affine (weight, bias) left out: batch statistics in
    train mode (its running statistics and batch count updated as ``bn`` itself would), running
    statistics in eval mode. A stitch that folds the affine into the linear map after it gets
    the same output with no gradient to compute for its input (see ``ConvStitch``)."""
    momentum = bn.momentum
    if bn.training:
        bn.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average, as BatchNorm keeps one
            momentum = 1.0 / float(bn.num_batches_tracked)
    return torch.nn.functional.batch_norm(
        x, bn.running_mean, bn.running_var, None, None, bn.training, momentum, bn.eps
    )


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src.to(device=dst.device, dtype=dst.dtype))


@torch.no_grad()
def set_input_norm(bn: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Make ``bn`` standardise with the given data statistics in both modes."""
    _copy(bn.running_mean, mean)
    _copy(bn.running_var, var)
    bn.weight.fill_(1.0)
    bn.bias.zero_()


@torch.no_grad()
def set_output_norm(bn: nn.Module, fit: AffineFit) -> None:
    """Make ``bn`` turn ``z = W x̂`` into ``z + b`` in both modes (see the module docstring)."""
    _copy(bn.running_mean, fit.linear_mean)
    _copy(bn.running_var, fit.linear_var)
    _copy(bn.weight, (fit.linear_var + bn.eps).sqrt())
    _copy(bn.bias, fit.linear_mean + fit.bias)


@torch.no_grad()
def set_identity_norm(bn: nn.Module) -> None:
    """Exact identity in eval mode: mean 0, ``var + eps = 1``, weight 1, bias 0."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.fill_(1.0)
    bn.bias.zero_()


def identity_fit(mean: torch.Tensor, var: torch.Tensor, eps: float) -> AffineFit:
    """The affine fit that undoes input standardisation: ``W = diag(sqrt(var + eps))``,
    ``b = mean``; ``z = W x̂ = x - mean`` has mean 0 and variance ``var``."""
    mean = mean.to(torch.float64)
    var = var.to(torch.float64)
    weight = torch.diag((var + eps).sqrt())
    return AffineFit(weight, mean, 0.0, torch.zeros_like(mean), var, 0)


class PendingIdentity:
    """Mixin for sandwich stitches: an identity set without data calibrates on the first
    train-mode batch. Subclasses implement ``fit_identity(sender_acts)`` and run their forward
    inside ``with self.calibrating(x):``."""

    pending_identity: bool = False

    def fit_identity(self, sender_acts: torch.Tensor) -> None:
        raise NotImplementedError

    @contextmanager
    def calibrating(self, x: torch.Tensor) -> Iterator[None]:
        """Calibrate on ``x`` if an identity is pending and we are training; the BatchNorms then
        leave their running statistics as calibrated for this one forward (momentum 0), so the
        calibration batch gives the identity in train mode and eval mode alike."""
        if not (self.pending_identity and self.training):  # type: ignore[attr-defined]
            yield
            return
        with torch.no_grad():
            self.fit_identity(x)
        self.pending_identity = False
        norms = [m for m in self.modules() if isinstance(m, _BatchNorm)]  # type: ignore[attr-defined]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, momentum in zip(norms, saved):
                m.momentum = momentum
