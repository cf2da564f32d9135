"""``token_linear``: a token-wise linear map for transformer tokens, and the layout adapter
family for mixed pairs (CNN → ViT, ViT → CNN, nhwc maps included).

The sender's patch grid (a ViT's patch tokens, or a CNN map seen as one token per position) is
resampled to the receiver's grid when the two differ, then every position goes through one shared
``nn.Linear`` (SN-Net and Bansal et al. stitch ViTs this way). There is no BatchNorm, so train and
eval mode compute the same map.

Build options:

- ``prefix`` — how the receiver's prefix (class/register) tokens are made; the receiver's own
  count is always produced:
    - ``map``: the sender's prefix tokens go through the same linear map one-to-one (needs equal
      prefix counts; the default when both sides have the same number of prefix tokens);
    - ``pool``: each receiver prefix token is a separate linear map of the mean of the sender's
      (resampled) patch tokens (the default when the counts differ, e.g. CNN → ViT);
    - ``learn``: input-independent learned tokens (initialised to the receiver's mean prefix).
  Sender prefix tokens not used by ``map`` are dropped (a CNN receiver has no place for them).
- ``resample`` — ``auto`` (area averaging to shrink, bilinear to grow), ``area``, ``bilinear``
  or ``nearest``; used only when the grids differ;
- ``ridge`` — relative ridge of the lstsq init (default 1e-4; 0 fits exactly).

Refused: pairs without tokens on either side (the conv families own map → map), vectors on
either side (a vector has no grid; ``linear`` owns vector receivers) and ``other`` layouts.
"""

from __future__ import annotations

import torch
from torch import nn

from stitchcore.plugin import ActivationSpec, LeastSquares, StitchError

from .base import DEFAULT_RIDGE, Family, as_choice, as_ridge
from .layouts import (
    RESAMPLE_MODES,
    check_batch,
    from_grid,
    grid_size,
    grid_tokens,
    kind,
    resample,
    to_grid,
    tokens_to_grid,
)

PREFIX_POLICIES = ("auto", "map", "pool", "learn")
FIT_CHUNK = 256


def prefix_policy(policy: str, sender: ActivationSpec, receiver: ActivationSpec) -> str:
    """The concrete policy ``auto`` stands for (``none`` when the receiver has no prefix)."""
    p_r = receiver.prefix_tokens if receiver.layout == "tokens" else 0
    if p_r == 0:
        return "none"
    if policy != "auto":
        return policy
    p_s = sender.prefix_tokens if sender.layout == "tokens" else 0
    return "map" if p_s == p_r else "pool"


class TokenLinearStitch(nn.Module):
    """Resample the sender's grid to the receiver's, apply a shared per-token linear map, and
    make the receiver's prefix tokens by the chosen policy."""

    def __init__(
        self,
        sender: ActivationSpec,
        receiver: ActivationSpec,
        prefix: str = "auto",
        resample_mode: str = "auto",
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        super().__init__()
        self.sender_spec, self.receiver_spec = sender, receiver
        self.ridge = ridge
        self.prefix = prefix_policy(prefix, sender, receiver)
        self.resample_mode = resample_mode
        self.grid = grid_size(receiver)
        c_in, c_out = sender.channels, receiver.channels
        self.n_prefix = receiver.prefix_tokens if receiver.layout == "tokens" else 0
        self.linear = nn.Linear(c_in, c_out)
        if self.prefix == "pool":
            self.prefix_linear = nn.Linear(c_in, self.n_prefix * c_out)
        elif self.prefix == "learn":
            self.prefix_tokens = nn.Parameter(torch.zeros(self.n_prefix, c_out))
            nn.init.trunc_normal_(self.prefix_tokens, std=0.02)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(sender prefix tokens or None, sender patch tokens on the receiver's grid)."""
        prefix, grid = to_grid(x, self.sender_spec)
        return prefix, grid_tokens(resample(grid, self.grid, self.resample_mode))

    def make_prefix(self, prefix: torch.Tensor | None, tokens: torch.Tensor):
        if self.prefix == "map":
            return self.linear(prefix)
        if self.prefix == "pool":
            out = self.prefix_linear(tokens.mean(1))
            return out.view(tokens.shape[0], self.n_prefix, -1)
        if self.prefix == "learn":
            return self.prefix_tokens.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = self.features(x)
        out = self.linear(tokens)
        return from_grid(
            self.make_prefix(prefix, tokens), tokens_to_grid(out, self.grid), self.receiver_spec
        )

    @torch.no_grad()
    def fit(self, sender_acts: torch.Tensor, receiver_acts: torch.Tensor) -> None:
        """Least squares with bias over all patch tokens (and prefix tokens under ``map``);
        ``pool`` fits its own map from mean tokens to prefix tokens, ``learn`` takes the mean."""
        check_batch(sender_acts, self.sender_spec, "sender")
        check_batch(receiver_acts, self.receiver_spec, "receiver")
        tok_ls, pre_ls = LeastSquares(), LeastSquares()
        pre_sum, n = None, 0
        for start in range(0, sender_acts.shape[0], FIT_CHUNK):
            s_prefix, s_tokens = self.features(sender_acts[start : start + FIT_CHUNK].float())
            r_prefix, r_grid = to_grid(
                receiver_acts[start : start + FIT_CHUNK].float(), self.receiver_spec
            )
            r_tokens = grid_tokens(r_grid)
            tok_ls.add(
                s_tokens.reshape(-1, s_tokens.shape[-1]), r_tokens.reshape(-1, r_tokens.shape[-1])
            )
            if self.prefix == "map":
                tok_ls.add(
                    s_prefix.reshape(-1, s_prefix.shape[-1]),
                    r_prefix.reshape(-1, r_prefix.shape[-1]),
                )
            elif self.prefix == "pool":
                pre_ls.add(s_tokens.mean(1), r_prefix.flatten(1))
            elif self.prefix == "learn":
                batch_sum = r_prefix.double().sum(0)
                pre_sum = batch_sum if pre_sum is None else pre_sum + batch_sum
                n += r_prefix.shape[0]
        _set_linear(self.linear, tok_ls.solve(ridge=self.ridge))
        if self.prefix == "pool":
            _set_linear(self.prefix_linear, pre_ls.solve(ridge=self.ridge))
        elif self.prefix == "learn":
            self.prefix_tokens.copy_((pre_sum / n).to(self.prefix_tokens.dtype))

    @torch.no_grad()
    def set_identity(self) -> None:
        s, r = self.sender_spec, self.receiver_spec
        if s.channels != r.channels:
            raise StitchError(
                f"token_linear identity needs equal widths, got {s.channels} → {r.channels}"
            )
        if self.prefix == "learn":
            raise StitchError("token_linear identity needs prefix policy 'map' or 'pool'")
        eye = torch.eye(r.channels)
        _copy_linear(self.linear, eye, torch.zeros(r.channels))
        if self.prefix == "pool":
            _copy_linear(
                self.prefix_linear,
                eye.repeat(self.n_prefix, 1),
                torch.zeros(self.n_prefix * r.channels),
            )


def _copy_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.weight.copy_(weight.to(linear.weight.dtype))
    linear.bias.copy_(bias.to(linear.bias.dtype))


def _set_linear(linear: nn.Linear, fit) -> None:
    _copy_linear(linear, fit.weight, fit.bias)


class TokenLinearFamily(Family):
    """Token-wise linear map with grid resampling and a prefix-token policy; serves every pair
    with tokens on at least one side and a map or tokens on the other."""

    name = "token_linear"
    description = "token-wise linear (resampled grid, prefix-token policy); tokens ↔ tokens/maps"
    auto_priority = 40
    options = {"prefix": "auto", "resample": "auto", "ridge": DEFAULT_RIDGE}

    def parse_options(self, options):
        opts = super().parse_options(options)
        opts["prefix"] = as_choice("prefix", opts["prefix"], PREFIX_POLICIES)
        opts["resample"] = as_choice("resample", opts["resample"], RESAMPLE_MODES)
        opts["ridge"] = as_ridge(opts["ridge"])
        return opts

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> str | None:
        ks, kr = kind(sender), kind(receiver)
        if "other" in (ks, kr):
            return "layout 'other' has no token or map structure to stitch"
        if "vector" in (ks, kr):
            return (
                "a vector has no token grid; linear stitches into vectors (maps and tokens are "
                "pooled), nothing stitches a vector into tokens or maps"
            )
        if "tokens" not in (ks, kr):
            return (
                "neither side is a token sequence; conv1x1/strided_conv/upsample_conv stitch maps"
            )
        policy = options.get("prefix", "auto")
        if policy == "map" and prefix_policy("map", sender, receiver) == "map":
            p_s = sender.prefix_tokens if ks == "tokens" else 0
            if p_s != receiver.prefix_tokens:
                return (
                    f"prefix='map' needs equal prefix-token counts, got {p_s} → "
                    f"{receiver.prefix_tokens}; use prefix='pool' or 'learn'"
                )
        for spec in (sender, receiver):
            if 0 in grid_size(spec):
                return f"{spec.describe()} has no patch tokens"
        return None

    def make(self, sender, receiver, prefix="auto", resample="auto", ridge=DEFAULT_RIDGE):
        return TokenLinearStitch(sender, receiver, prefix, resample, ridge)

    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Least squares with bias on paired tokens (see TokenLinearStitch.fit)."""
        self.check_stitch(stitch, TokenLinearStitch)
        stitch.fit(sender_acts, receiver_acts)

    def init_identity(self, stitch: nn.Module) -> None:
        """Identity per token between equal widths (grids are still resampled; under ``pool``
        each prefix token becomes the mean patch token)."""
        self.check_stitch(stitch, TokenLinearStitch)
        stitch.set_identity()
