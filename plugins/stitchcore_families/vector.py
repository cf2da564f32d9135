"""``linear``: stitching into a feature vector, e.g. just before a classifier.

BatchNorm1d → Linear → BatchNorm1d, as Bansal et al. stitch at the last stage of a ResNet.
The receiver must be a ``vector``. The sender may be a vector, or a map or token sequence that
is pooled first — sensible because a vector receiver expects exactly such a pooled summary.

Build options:

- ``pool`` — how a map or token sequence becomes a vector: ``auto`` (a ViT's class token when
  the sender has prefix tokens, which is what its own head reads, else the average), ``avg``
  (mean over positions / patch tokens), ``max``, ``prefix`` (first prefix token) or ``flatten``
  (every position, as Hernandez et al.'s flatten + linear; large for big maps);
- ``batchnorm`` — default true; false gives a bare Linear with bias;
- ``ridge`` — relative ridge of the lstsq init (default 1e-4; 0 fits exactly).

Refused: non-vector receivers (nothing un-pools a vector) and ``other`` layouts.
"""

from __future__ import annotations

import torch
from torch import nn

from stitchcore.plugin import ActivationSpec, StitchError, lstsq_with_bias

from .base import DEFAULT_RIDGE, Family, as_bool, as_choice, as_ridge
from .layouts import POOL_MODES, check_batch, kind, pool, pool_refusal, pooled_width
from .normfit import (
    PendingIdentity,
    channel_moments,
    identity_fit,
    normalise,
    set_identity_norm,
    set_input_norm,
    set_output_norm,
)


class LinearStitch(PendingIdentity, nn.Module):
    """``pool → bn_in → linear → bn_out`` into a vector."""

    def __init__(
        self,
        sender: ActivationSpec,
        receiver: ActivationSpec,
        pool: str = "auto",
        batchnorm: bool = True,
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec, self.pool = sender, receiver, pool
        self.ridge = ridge
        c_in, c_out = pooled_width(pool, sender), receiver.channels
        self.bn_in = nn.BatchNorm1d(c_in) if batchnorm else nn.Identity()
        self.linear = nn.Linear(c_in, c_out, bias=not batchnorm)
        self.bn_out = nn.BatchNorm1d(c_out) if batchnorm else nn.Identity()

    @property
    def batchnorm(self) -> bool:
        return isinstance(self.bn_in, nn.BatchNorm1d)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return pool(x, self.sender_spec, self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.pooled(x)
        with self.calibrating(v):
            return self.bn_out(self.linear(self.bn_in(v)))

    def _apply_fit(self, fit) -> None:
        self.linear.weight.copy_(fit.weight.to(self.linear.weight.dtype))
        if self.batchnorm:
            set_output_norm(self.bn_out, fit)
        else:
            self.linear.bias.copy_(fit.bias.to(self.linear.bias.dtype))

    @torch.no_grad()
    def fit(self, sender_acts: torch.Tensor, receiver_acts: torch.Tensor) -> None:
        check_batch(sender_acts, self.sender_spec, "sender")
        check_batch(receiver_acts, self.receiver_spec, "receiver")
        v = self.pooled(sender_acts.float())
        if self.batchnorm:
            set_input_norm(self.bn_in, *channel_moments(v))
        self._apply_fit(
            lstsq_with_bias(normalise(v, self.bn_in), receiver_acts.float(), ridge=self.ridge)
        )
        self.pending_identity = False

    @torch.no_grad()
    def fit_identity(self, pooled: torch.Tensor) -> None:
        """Identity in both modes; statistics from already pooled sender vectors."""
        mean, var = channel_moments(pooled)
        set_input_norm(self.bn_in, mean, var)
        self._apply_fit(identity_fit(mean, var, self.bn_in.eps))

    @torch.no_grad()
    def set_identity(self) -> None:
        self.linear.weight.copy_(torch.eye(self.linear.out_features))
        if self.batchnorm:
            set_identity_norm(self.bn_in)
            set_identity_norm(self.bn_out)
            self.pending_identity = True
        else:
            self.linear.bias.zero_()


class LinearFamily(Family):
    """BatchNorm1d → Linear → BatchNorm1d into a vector receiver (maps/tokens pooled)."""

    name = "linear"
    description = "BatchNorm1d → Linear → BatchNorm1d into vectors (maps and tokens pooled first)"
    auto_priority = 50
    options = {"pool": "auto", "batchnorm": True, "ridge": DEFAULT_RIDGE}

    def parse_options(self, options):
        opts = super().parse_options(options)
        opts["batchnorm"] = as_bool("batchnorm", opts["batchnorm"])
        opts["pool"] = as_choice("pool", opts["pool"], POOL_MODES)
        opts["ridge"] = as_ridge(opts["ridge"])
        return opts

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> str | None:
        if kind(receiver) != "vector":
            return f"linear stitches into vectors, the receiver is {receiver.layout}" + (
                "; nothing can recover a map or tokens from a vector"
                if kind(sender) == "vector"
                else ""
            )
        if kind(sender) == "other":
            return "layout 'other' cannot be pooled into a vector"
        return pool_refusal(options.get("pool", "auto"), sender)

    def make(self, sender, receiver, pool="auto", batchnorm=True, ridge=DEFAULT_RIDGE):
        return LinearStitch(sender, receiver, pool, batchnorm, ridge)

    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Least squares with bias from the pooled, normalised sender vector; BatchNorms set so
        the fit holds in train and eval mode."""
        self.check_stitch(stitch, LinearStitch)
        stitch.fit(sender_acts, receiver_acts)

    def init_identity(self, stitch: nn.Module, sender_acts: torch.Tensor | None = None) -> None:
        """Identity between equal (pooled) widths; with ``sender_acts`` it holds in both modes
        at once, without it is exact in eval mode and calibrates on the first train batch."""
        self.check_stitch(stitch, LinearStitch)
        c_in, c_out = stitch.linear.in_features, stitch.linear.out_features
        if c_in != c_out:
            raise StitchError(f"linear identity needs equal widths, got {c_in} → {c_out}")
        if sender_acts is not None:
            stitch.fit_identity(stitch.pooled(sender_acts.float()))
        else:
            stitch.set_identity()
