"""``subpixel_conv``: a learned upsampling whose closed form can reproduce spatial detail.

Hernandez et al.'s ``upsample_conv`` (nearest ×k, then a 1×1 conv) can only produce maps that
are constant over k×k blocks, so least squares cannot solve a deeper (smaller) sender into an
earlier (larger) receiver cut: its init is at chance and the stitch learns from scratch, slowly.
This family instead gives each of the k×k sub-positions of a sender position its own linear map
of the sender's neighbourhood (a ``kernel``×``kernel`` patch, default 3): a convolution to
``C_r·k_h·k_w`` channels rearranged into the k×k block (a pixel shuffle; Shi et al. 2016,
"Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional
Neural Network", CVPR, arXiv:1609.05158). Its least-squares init fits every sub-position's
receiver activation from the sender's patch, which is one multi-output least-squares problem,
so a cell whose receiver detail is predictable from the sender starts solved and only needs
fine-tuning. ``auto`` prefers it to ``upsample_conv`` for sender maps k× smaller; choose
``--family upsample_conv`` for the reference family of the literature.

Sandwich as the other families: BatchNorm on the sender's channels → conv → BatchNorm on the
``C_r·k_h·k_w`` conv outputs (before the rearrangement, so the closed form holds in train and
eval mode exactly as for ``conv1x1``) → rearrangement into the receiver's map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitchcore.plugin import ActivationSpec, StitchError

from .base import DEFAULT_RIDGE, as_bool, as_ridge
from .conv import SandwichFit, _ConvFamily, integer_factor
from .layouts import from_nchw, size_text, to_nchw

__all__ = ["SubpixelConvFamily", "SubpixelStitch"]


class SubpixelStitch(SandwichFit, nn.Module):
    """``bn_in → conv(kernel, same padding) → bn_out → k_h×k_w rearrangement``. The kernel is
    at most as wide as the sender's map reaches (2·H−1 × 2·W−1)."""

    def __init__(
        self,
        sender: ActivationSpec,
        receiver: ActivationSpec,
        scale: tuple[int, int],
        kernel: int = 3,
        batchnorm: bool = True,
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec = sender, receiver
        self.scale, self.ridge = tuple(scale), ridge
        # a tap further from the centre than the map is wide only ever sees the zero padding:
        # leave it out (a 1×1 sender map gets a 1×1 kernel; the same function, 9× fewer weights)
        h, w = sender.spatial
        self.kernel = (min(kernel, 2 * h - 1), min(kernel, 2 * w - 1))
        self.padding = (self.kernel[0] // 2, self.kernel[1] // 2)
        c_in, c_out = sender.channels, receiver.channels
        self.c_out = c_out
        wide = c_out * self.scale[0] * self.scale[1]
        self.bn_in = nn.BatchNorm2d(c_in) if batchnorm else nn.Identity()
        self.conv = nn.Conv2d(c_in, wide, self.kernel, padding=self.padding, bias=not batchnorm)
        self.bn_out = nn.BatchNorm2d(wide) if batchnorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_out(self.conv(self.bn_in(to_nchw(x, self.sender_spec.layout))))
        return from_nchw(self._shuffle(y), self.receiver_spec.layout)

    def _shuffle(self, y: torch.Tensor) -> torch.Tensor:
        """(N, C·kh·kw, H, W) → (N, C, H·kh, W·kw): channel (c, a, b) goes to (c, i·kh+a, j·kw+b)."""
        n, _, h, w = y.shape
        kh, kw = self.scale
        y = y.view(n, self.c_out, kh, kw, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, self.c_out, h * kh, w * kw)

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_shuffle`, as least-squares targets: one row per sender
        position, the receiver's k_h×k_w block in the conv's (c, a, b) channel order."""
        n, c, hh, ww = y.shape
        kh, kw = self.scale
        h, w = hh // kh, ww // kw
        y = y.view(n, c, h, kh, w, kw).permute(0, 2, 4, 1, 3, 5)
        return y.reshape(n * h * w, c * kh * kw)

    def _rows(self, x_hat: torch.Tensor) -> torch.Tensor:
        """One row per sender position: its ``kernel``×``kernel`` neighbourhood (zero-padded as
        the conv pads), flattened in the conv weight's (C, kh, kw) order."""
        cols = F.unfold(x_hat, kernel_size=self.kernel, padding=self.padding)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class SubpixelConvFamily(_ConvFamily):
    """Per-sub-position linear maps of a sender patch when the sender's map is k× smaller."""

    name = "subpixel_conv"
    description = (
        "BatchNorm → conv (3×3 patch → C·k² channels) → BatchNorm → pixel shuffle ×k; "
        "sender map k× smaller; least squares fits each sub-position"
    )
    auto_priority = 25
    options = {"batchnorm": True, "ridge": DEFAULT_RIDGE, "kernel": 3}

    def parse_options(self, options):
        opts = super().parse_options(options)
        opts["batchnorm"] = as_bool("batchnorm", opts["batchnorm"])
        opts["ridge"] = as_ridge(opts["ridge"])
        k = opts["kernel"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise StitchError(f"subpixel_conv option kernel must be an odd integer ≥ 1, got {k!r}")
        return opts

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

    def make(self, sender, receiver, batchnorm=True, ridge=DEFAULT_RIDGE, kernel=3):
        src, dst = sender.spatial, receiver.spatial
        scale = (dst[0] // src[0], dst[1] // src[1])
        return SubpixelStitch(sender, receiver, scale, kernel, batchnorm, ridge)

    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Least squares of every sub-position's receiver activation on the sender's patch."""
        self.check_stitch(stitch, SubpixelStitch)
        stitch.fit(sender_acts, receiver_acts)
