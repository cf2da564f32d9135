"""Feature map → feature map stitches: ``conv1x1``, ``strided_conv`` and ``upsample_conv``.

All three are the BatchNorm → convolution → BatchNorm sandwich of Bansal et al.; they differ in
how they bridge a spatial mismatch (Hernandez et al.):

- ``conv1x1``: equal spatial sizes, a 1×1 convolution;
- ``strided_conv``: the sender's map is k× larger; a convolution with kernel = stride = k;
- ``upsample_conv``: the sender's map is k× smaller; nearest upsampling ×k, then a 1×1 conv.

k may differ between height and width but must be an integer. Sender and receiver may be
``nchw`` or ``nhwc`` (layouts.py converts). Build options: ``batchnorm`` (default true; false
gives a bare convolution with bias) and ``ridge`` (relative ridge of the lstsq init, default
1e-4; 0 fits exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitchcore.plugin import ActivationSpec, LeastSquares, StitchError

from .base import DEFAULT_RIDGE, Family, as_bool, as_ridge
from .layouts import check_batch, from_nchw, kind, size_text, to_nchw
from .normfit import (
    PendingIdentity,
    channel_moments,
    identity_fit,
    normalise,
    set_identity_norm,
    set_input_norm,
    set_output_norm,
    standardise,
)

#: Samples per chunk when building least-squares rows (bounds memory for wide patches).
FIT_CHUNK = 64


class SandwichFit:
    """The closed form shared by the conv sandwiches (``bn_in → conv → bn_out``, see normfit):
    input BatchNorm set to the sender's statistics, least squares of :meth:`_targets` on
    :meth:`_rows` of the normalised sender, output BatchNorm set so the fit holds in train and
    eval mode. Subclasses define ``_rows``, ``_targets`` and the modules."""

    @torch.no_grad()
    def fit(self, sender_acts: torch.Tensor, receiver_acts: torch.Tensor) -> None:
        check_batch(sender_acts, self.sender_spec, "sender")
        check_batch(receiver_acts, self.receiver_spec, "receiver")
        xs = to_nchw(sender_acts, self.sender_spec.layout).float()
        ys = to_nchw(receiver_acts, self.receiver_spec.layout).float()
        if self.batchnorm:
            set_input_norm(self.bn_in, *channel_moments(xs))
        ls = LeastSquares()
        for start in range(0, xs.shape[0], FIT_CHUNK):
            x_hat = normalise(xs[start : start + FIT_CHUNK], self.bn_in)
            ls.add(self._rows(x_hat), self._targets(ys[start : start + FIT_CHUNK]))
        self._apply_fit(ls.solve(ridge=self.ridge))
        self.pending_identity = False

    def _apply_fit(self, fit) -> None:
        w = self.conv.weight
        w.copy_(fit.weight.view(w.shape).to(w.dtype))
        if self.batchnorm:
            set_output_norm(self.bn_out, fit)
        else:
            self.conv.bias.copy_(fit.bias.to(w.dtype))

    @property
    def batchnorm(self) -> bool:
        return isinstance(self.bn_in, nn.BatchNorm2d)


class ConvStitch(SandwichFit, PendingIdentity, nn.Module):
    """``bn_in → [nearest upsample] → conv(kernel = stride) → bn_out`` between two maps."""

    def __init__(
        self,
        sender: ActivationSpec,
        receiver: ActivationSpec,
        kernel: tuple[int, int] = (1, 1),
        upsample: tuple[int, int] = (1, 1),
        batchnorm: bool = True,
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec = sender, receiver
        self.ridge = ridge
        self.kernel, self.scale = tuple(kernel), tuple(upsample)
        c_in, c_out = sender.channels, receiver.channels
        self.bn_in = nn.BatchNorm2d(c_in) if batchnorm else nn.Identity()
        self.upsample = (
            nn.Upsample(scale_factor=self.scale, mode="nearest")
            if self.scale != (1, 1)
            else nn.Identity()
        )
        self.conv = nn.Conv2d(c_in, c_out, self.kernel, stride=self.kernel, bias=not batchnorm)
        self.bn_out = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``bn_out(conv(upsample(bn_in(x))))``, computed with ``bn_in``'s affine folded into the
        convolution (``W·diag(γ)``, bias ``W·β``; exact, as the kernel has no padding): the
        normalised sender needs no gradient then, so a training step skips the convolution's
        input gradient and ``bn_in``'s backward (a third of the stitch's arithmetic)."""
        with self.calibrating(x):
            y = to_nchw(x, self.sender_spec.layout)
            if self.batchnorm:
                bn, w = self.bn_in, self.conv.weight
                y = standardise(y, bn)
                weight, bias = w * bn.weight.view(1, -1, 1, 1), w.sum((2, 3)) @ bn.bias
            else:
                weight, bias = self.conv.weight, self.conv.bias
            y = F.conv2d(self.upsample(y), weight, bias, stride=self.conv.stride)
            y = self.bn_out(y)
        return from_nchw(y, self.receiver_spec.layout)

    # ---------------------------------------------------------------- closed-form fits
    def _rows(self, x_hat: torch.Tensor) -> torch.Tensor:
        """Least-squares rows: one per conv output position, the receptive field flattened in
        the conv weight's (C, kh, kw) order (for upsample_conv: one per *sender* position)."""
        cols = F.unfold(x_hat, kernel_size=self.kernel, stride=self.kernel)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        """Least-squares targets, one row per row of :meth:`_rows`. Nearest upsampling repeats
        each sender position over a k×k block, so the fit on upsampled rows equals the fit of
        the sender positions to the receiver's block means (the within-block spread of y is a
        constant of the loss): same solution, k² fewer rows."""
        if self.scale != (1, 1):
            y = F.avg_pool2d(y, self.scale)
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])

    @torch.no_grad()
    def fit_identity(self, sender_acts: torch.Tensor) -> None:
        """Identity realised in both modes, with BatchNorm statistics from ``sender_acts``."""
        xs = to_nchw(sender_acts, self.sender_spec.layout).float()
        mean, var = channel_moments(xs)
        set_input_norm(self.bn_in, mean, var)
        self._apply_fit(identity_fit(mean, var, self.bn_in.eps))

    @torch.no_grad()
    def set_identity(self) -> None:
        """Identity exact in eval mode without data (see normfit.PendingIdentity)."""
        w = self.conv.weight
        w.zero_()
        w[:, :, 0, 0] = torch.eye(w.shape[0], dtype=w.dtype)
        if self.batchnorm:
            set_identity_norm(self.bn_in)
            set_identity_norm(self.bn_out)
            self.pending_identity = True
        else:
            self.conv.bias.zero_()


def integer_factor(big: int, small: int) -> int | None:
    """k with ``big == k * small``, or None."""
    if small <= 0 or big % small:
        return None
    return big // small


class _ConvFamily(Family):
    options = {"batchnorm": True, "ridge": DEFAULT_RIDGE}

    def parse_options(self, options):
        opts = super().parse_options(options)
        opts["batchnorm"] = as_bool("batchnorm", opts["batchnorm"])
        opts["ridge"] = as_ridge(opts["ridge"])
        return opts

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> str | None:
        if kind(sender) != "map" or kind(receiver) != "map":
            hint = (
                "token_linear handles tokens"
                if "tokens" in (sender.layout, receiver.layout)
                else "linear handles vectors"
                if receiver.layout == "vector"
                else "no standard family handles this layout"
            )
            return (
                f"{self.name} needs feature maps (nchw/nhwc) on both sides, got "
                f"{sender.layout} → {receiver.layout}; {hint}"
            )
        return self.spatial_reason(sender.spatial, receiver.spatial)

    def spatial_reason(self, src: tuple[int, int], dst: tuple[int, int]) -> str | None:
        raise NotImplementedError

    def factors(self, sender: ActivationSpec, receiver: ActivationSpec) -> tuple[int, int]:
        raise NotImplementedError

    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Least squares with bias on (normalised) sender positions or patches; BatchNorms set
        so the fit holds in train and eval mode."""
        self.check_stitch(stitch, ConvStitch)
        stitch.fit(sender_acts, receiver_acts)


class Conv1x1Family(_ConvFamily):
    """BatchNorm → 1×1 conv → BatchNorm between maps of equal spatial size (Bansal et al.)."""

    name = "conv1x1"
    description = "BatchNorm → 1×1 conv → BatchNorm between equal-size feature maps (Bansal)"
    auto_priority = 10

    def spatial_reason(self, src, dst):
        if src != dst:
            return (
                f"spatial sizes differ ({size_text(src)} → {size_text(dst)}); strided_conv "
                "(sender larger) or upsample_conv (sender smaller) bridge integer ratios"
            )
        return None

    def make(self, sender, receiver, batchnorm=True, ridge=DEFAULT_RIDGE):
        return ConvStitch(sender, receiver, batchnorm=batchnorm, ridge=ridge)

    def init_identity(self, stitch: nn.Module, sender_acts: torch.Tensor | None = None) -> None:
        """Identity between equal widths. With ``sender_acts`` it holds in train and eval mode at
        once; without, it is exact in eval mode and calibrates on the first train batch."""
        self.check_stitch(stitch, ConvStitch)
        s, r = stitch.sender_spec, stitch.receiver_spec
        if s.channels != r.channels:
            raise StitchError(
                f"conv1x1 identity needs equal widths, got {s.channels} → {r.channels} channels"
            )
        if sender_acts is not None:
            stitch.fit_identity(sender_acts)
        else:
            stitch.set_identity()


class StridedConvFamily(_ConvFamily):
    """Conv with kernel = stride = k when the sender's map is k× larger (Hernandez et al.)."""

    name = "strided_conv"
    description = "BatchNorm → conv (kernel = stride = k) → BatchNorm; sender map k× larger"
    auto_priority = 20

    def spatial_reason(self, src, dst):
        kh, kw = integer_factor(src[0], dst[0]), integer_factor(src[1], dst[1])
        if kh is None or kw is None:
            return (
                f"sender map {size_text(src)} is not an integer multiple of the receiver's "
                f"{size_text(dst)}"
            )
        if (kh, kw) == (1, 1):
            return "spatial sizes are equal; use conv1x1"
        return None

    def make(self, sender, receiver, batchnorm=True, ridge=DEFAULT_RIDGE):
        src, dst = sender.spatial, receiver.spatial
        kernel = (src[0] // dst[0], src[1] // dst[1])
        return ConvStitch(sender, receiver, kernel=kernel, batchnorm=batchnorm, ridge=ridge)


class UpsampleConvFamily(_ConvFamily):
    """Nearest upsampling ×k then a 1×1 conv when the sender's map is k× smaller."""

    name = "upsample_conv"
    description = "BatchNorm → nearest upsample ×k → 1×1 conv → BatchNorm; sender map k× smaller"
    auto_priority = 30

    def spatial_reason(self, src, dst):
        kh, kw = integer_factor(dst[0], src[0]), integer_factor(dst[1], src[1])
        if kh is None or kw is None:
            return (
                f"receiver map {size_text(dst)} is not an integer multiple of the sender's "
                f"{size_text(src)}"
            )
        if (kh, kw) == (1, 1):
            return "spatial sizes are equal; use conv1x1"
        return None

    def make(self, sender, receiver, batchnorm=True, ridge=DEFAULT_RIDGE):
        src, dst = sender.spatial, receiver.spatial
        scale = (dst[0] // src[0], dst[1] // src[1])
        return ConvStitch(sender, receiver, upsample=scale, batchnorm=batchnorm, ridge=ridge)
