"""``permutation``: match channels one-to-one, no training (Csiszárik et al.'s permutation
baseline; "is the receiver's channel j just the sender's channel i?").

The fit correlates every sender channel with every receiver channel over all samples and
positions and solves the assignment that maximises the summed correlation (Hungarian method,
``scipy.optimize.linear_sum_assignment``). The stitch reorders channels and does nothing else,
so it is not trained (``trainable = False``) and ``auto`` never picks it.

Refused, with the reason: unequal widths (a permutation is square), different kinds of
activation (map vs tokens vs vector), and maps or token sequences of different sizes.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from stitchcore.plugin import ActivationSpec

from .base import Family
from .layouts import check_batch, from_nchw, kind, size_text, to_nchw


def channels_last(x: torch.Tensor, spec: ActivationSpec) -> torch.Tensor:
    """Rows = (sample, position), columns = channels."""
    if kind(spec) == "map":
        x = to_nchw(x, spec.layout)
        return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every column of ``x`` with every column of ``y`` (float64);
    constant columns correlate 0 with everything."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    sx = x.norm(dim=0)
    sy = y.norm(dim=0)
    sx[sx == 0] = 1.0
    sy[sy == 0] = 1.0
    return (x / sx).T @ (y / sy)


def match_channels(corr: torch.Tensor) -> torch.Tensor:
    """``index`` with receiver channel j := sender channel ``index[j]``, maximising the summed
    correlation of matched pairs."""
    rows, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)
    index = torch.empty(corr.shape[1], dtype=torch.long)
    index[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return index


class PermutationStitch(nn.Module):
    """Reorders channels: ``out[..., j] = x[..., index[j]]`` (channel axis per layout)."""

    def __init__(self, sender: ActivationSpec, receiver: ActivationSpec) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec = sender, receiver
        self.register_buffer("index", torch.arange(sender.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kind(self.sender_spec) == "map":
            y = to_nchw(x, self.sender_spec.layout).index_select(1, self.index)
            return from_nchw(y, self.receiver_spec.layout)
        return x.index_select(x.dim() - 1, self.index)


class PermutationFamily(Family):
    """Channel permutation by Hungarian assignment on activation correlations."""

    name = "permutation"
    description = "channel permutation by Hungarian matching of correlations (not trained)"
    trainable = False
    auto_priority = None

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> str | None:
        ks, kr = kind(sender), kind(receiver)
        if "other" in (ks, kr):
            return "layout 'other' has no channel axis to permute"
        if ks != kr:
            return (
                f"a permutation maps like to like, got {sender.layout} → {receiver.layout}; "
                "token_linear or linear bridge layouts"
            )
        if sender.channels != receiver.channels:
            return (
                f"a permutation needs equal widths, got {sender.channels} → "
                f"{receiver.channels} channels"
            )
        if ks == "map" and sender.spatial != receiver.spatial:
            return (
                f"spatial sizes differ ({size_text(sender.spatial)} → "
                f"{size_text(receiver.spatial)}); a permutation cannot resize"
            )
        if ks == "tokens" and (
            sender.shape[0] != receiver.shape[0] or sender.prefix_tokens != receiver.prefix_tokens
        ):
            return (
                f"token counts differ ({sender.shape[0]} → {receiver.shape[0]} tokens, "
                f"{sender.prefix_tokens} → {receiver.prefix_tokens} prefix); a permutation "
                "cannot resample"
            )
        return None

    def make(self, sender, receiver):
        return PermutationStitch(sender, receiver)

    @torch.no_grad()
    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Hungarian assignment on sender × receiver channel correlations."""
        self.check_stitch(stitch, PermutationStitch)
        check_batch(sender_acts, stitch.sender_spec, "sender")
        check_batch(receiver_acts, stitch.receiver_spec, "receiver")
        corr = correlation(
            channels_last(sender_acts, stitch.sender_spec),
            channels_last(receiver_acts, stitch.receiver_spec),
        )
        stitch.index.copy_(match_channels(corr))

    @torch.no_grad()
    def init_identity(self, stitch: nn.Module) -> None:
        """Channel j to channel j."""
        self.check_stitch(stitch, PermutationStitch)
        stitch.index.copy_(torch.arange(stitch.index.numel()))
