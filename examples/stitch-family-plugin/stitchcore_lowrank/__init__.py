"""Example stitchcore plugin: ``lowrank``, a stitch that squeezes the sender through r channels.

A template to copy: it uses only stitchcore's public contract (``StitchFamily``,
``ActivationSpec``, ``StitchError``, ``stitchcore.linalg`` and the ``hookimpl`` marker) and is
found through the ``stitchcore`` entry-point group declared in this package's pyproject.toml.

The stitch is ``up(down(x))`` applied on the channel axis, with ``down: C_s → r`` and
``up: r → C_r``. It asks how much of what the receiver needs from the sender lives in an
r-dimensional subspace (Csiszárik et al. and drfrankenstein's ``LowRankTransform``; SN-Netv2's
LoRA stitches). Its closed-form init is reduced-rank regression: the least-squares fit, projected
onto the top-r principal directions of its own predictions.
"""

from __future__ import annotations

import torch
from torch import nn

import stitchcore
from stitchcore.plugin import ActivationSpec, StitchError, StitchFamily, lstsq_with_bias

LAYOUTS = ("nchw", "nhwc", "tokens", "vector")
DEFAULT_RANK = 16


def channel_axis(spec: ActivationSpec) -> int:
    """Axis of the channels in a *batched* activation of this layout."""
    return 1 if spec.layout == "nchw" else -1


def positions(spec: ActivationSpec) -> str:
    """The per-sample shape without the channel axis, as text (``8×8``, ``17``, ``-``)."""
    dims = list(spec.shape)
    del dims[0 if spec.layout == "nchw" else -1]
    return "×".join(str(d) for d in dims) or "-"


def rows(x: torch.Tensor, axis: int) -> torch.Tensor:
    """One row per (sample, position), channels as columns."""
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


class LowRankStitch(nn.Module):
    """``up(down(x))`` on the channel axis; every position is mapped the same way."""

    def __init__(self, sender: ActivationSpec, receiver: ActivationSpec, rank: int) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec, self.rank = sender, receiver, rank
        self.axis = channel_axis(sender)
        self.down = nn.Linear(sender.channels, rank, bias=False)
        self.up = nn.Linear(rank, receiver.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(x.movedim(self.axis, -1)))
        return y.movedim(-1, self.axis)


class LowRankFamily(StitchFamily):
    """Rank-r linear map between activations of the same layout and positions.

    Build option ``rank`` (default 16, at most the smaller width). Not picked by ``auto``
    (``auto_priority = None``): a bottleneck is an experiment, not a default.
    """

    name = "lowrank"
    description = "rank-r channel map up(down(x)) (example plugin; option rank=16)"
    trainable = True
    auto_priority = None

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec) -> str | None:
        if sender.layout not in LAYOUTS or sender.layout != receiver.layout:
            return f"needs the same layout on both sides, got {sender.layout} → {receiver.layout}"
        s_pos, r_pos = positions(sender), positions(receiver)
        if s_pos != r_pos:
            return f"positions differ ({s_pos} vs {r_pos}); lowrank maps channels only"
        return None

    def build(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> nn.Module:
        unknown = set(options) - {"rank"}
        if unknown:
            raise StitchError(f"lowrank has no option {', '.join(sorted(unknown))} (options: rank)")
        reason = self.accepts(sender, receiver)
        if reason:
            raise StitchError(
                f"lowrank cannot stitch {sender.describe()} → {receiver.describe()}: {reason}"
            )
        rank = int(options.get("rank", DEFAULT_RANK))
        widest = min(sender.channels, receiver.channels)
        if not 1 <= rank <= widest:
            raise StitchError(f"lowrank: rank must be between 1 and {widest}, got {rank}")
        return LowRankStitch(sender, receiver, rank)

    @torch.no_grad()
    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Reduced-rank regression: full least squares ``y ≈ W x + b``, then ``W`` projected on
        the top-``rank`` principal directions ``V`` of the centred predictions."""
        x = rows(sender_acts.float(), stitch.axis)
        y = rows(receiver_acts.float(), stitch.axis)
        fit = lstsq_with_bias(x, y)
        predicted = (x.double() - x.double().mean(0)) @ fit.weight.T
        _, _, vh = torch.linalg.svd(predicted, full_matrices=False)
        v = vh[: stitch.rank].T  # (C_r, rank)
        stitch.down.weight.copy_((v.T @ fit.weight).float())
        stitch.up.weight.copy_(v.float())
        bias = y.double().mean(0) - v @ (v.T @ (fit.weight @ x.double().mean(0)))
        stitch.up.bias.copy_(bias.float())

    @torch.no_grad()
    def init_identity(self, stitch: nn.Module) -> None:
        """Identity when both widths equal the rank."""
        c_in, c_out = stitch.down.in_features, stitch.up.out_features
        if not c_in == c_out == stitch.rank:
            raise StitchError(
                f"lowrank identity needs widths equal to the rank, got {c_in} → {c_out}, "
                f"rank {stitch.rank}"
            )
        stitch.down.weight.copy_(torch.eye(c_in))
        stitch.up.weight.copy_(torch.eye(c_in))
        stitch.up.bias.zero_()


@stitchcore.hookimpl
def register_stitch_families(register):
    """Called by stitchcore's plugin manager; hand it one instance per family."""
    register(LowRankFamily())
