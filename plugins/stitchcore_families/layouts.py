"""Layout adapters: move activations between feature maps, token sequences and vectors.

Every standard family works on one canonical form and converts on the way in and out, so one
family serves ``nchw`` and ``nhwc`` senders and receivers alike, and the token family serves
CNN → ViT and ViT → CNN pairs:

- a *map* (``nchw`` or ``nhwc``) is handled as ``nchw``;
- *tokens* are split into prefix (class/register) tokens ``(B, P, C)`` and the patch grid as an
  ``nchw`` map ``(B, C, h, w)`` (patch tokens are row-major over the grid, as ViTs flatten them);
- a *vector* ``(B, C)`` is the end of the line: a map or token sequence can be pooled into one,
  but nothing can be un-pooled, so a vector never feeds a map or tokens.

All adapters are parameter-free and linear, so closed-form fits can run on adapted activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitchcore.plugin import ActivationSpec, StitchError

MAP_LAYOUTS = ("nchw", "nhwc")
RESAMPLE_MODES = ("auto", "area", "bilinear", "nearest")
POOL_MODES = ("auto", "avg", "max", "prefix", "flatten")


def kind(spec: ActivationSpec) -> str:
    """``map``, ``tokens``, ``vector`` or ``other``."""
    if spec.layout in MAP_LAYOUTS:
        return "map"
    return spec.layout


def grid_size(spec: ActivationSpec) -> tuple[int, int]:
    """(h, w) of a map, or of the patch grid of a token sequence."""
    size = spec.spatial
    if size is None:
        raise ValueError(f"{spec.describe()} has no spatial grid")
    return size


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def to_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A batched map in ``layout`` as ``nchw``."""
    return x.permute(0, 3, 1, 2) if layout == "nhwc" else x


def from_nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An ``nchw`` batched map in ``layout`` (contiguous, so suffixes may use ``view``)."""
    return x.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else x


def to_grid(x: torch.Tensor, spec: ActivationSpec) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Split a batched map or token sequence into (prefix tokens or None, ``nchw`` grid)."""
    if spec.layout == "tokens":
        p = spec.prefix_tokens
        h, w = grid_size(spec)
        prefix = x[:, :p] if p else None
        grid = x[:, p:].transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)
        return prefix, grid
    return None, to_nchw(x, spec.layout)


def from_grid(
    prefix: torch.Tensor | None, grid: torch.Tensor, spec: ActivationSpec
) -> torch.Tensor:
    """Inverse of :func:`to_grid`: assemble an activation in ``spec``'s layout."""
    if spec.layout == "tokens":
        tokens = grid.flatten(2).transpose(1, 2)
        return tokens if prefix is None else torch.cat([prefix, tokens], dim=1)
    return from_nchw(grid, spec.layout)


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B, h*w, C)`` (row-major, like a ViT's patch tokens)."""
    return grid.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, C)`` → ``(B, C, h, w)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *size)


def resample_mode(mode: str, src: tuple[int, int], dst: tuple[int, int]) -> str:
    """The concrete mode ``auto`` stands for: averaging (area) to shrink, bilinear to grow."""
    if mode != "auto":
        return mode
    return "area" if src[0] >= dst[0] and src[1] >= dst[1] else "bilinear"


def resample(grid: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize an ``nchw`` grid to ``size`` (identity when it already has that size)."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    mode = resample_mode(mode, tuple(grid.shape[-2:]), size)
    if mode == "area":
        return F.adaptive_avg_pool2d(grid, size)
    if mode == "bilinear":
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(grid, size=size, mode="nearest")


def pool_mode(mode: str, spec: ActivationSpec) -> str:
    """The concrete pooling ``auto`` stands for: a ViT's class token when there is one (what
    its own head reads), else the average over positions; vectors need none."""
    if spec.layout == "vector":
        return "none"
    if mode != "auto":
        return mode
    if spec.layout == "tokens" and spec.prefix_tokens > 0:
        return "prefix"
    return "avg"


def pool_refusal(mode: str, spec: ActivationSpec) -> str | None:
    """Why ``mode`` cannot turn ``spec`` into a vector, or None."""
    if mode not in POOL_MODES:
        return f"unknown pool {mode!r}; choose from {', '.join(POOL_MODES)}"
    concrete = pool_mode(mode, spec)
    if concrete == "prefix" and not (spec.layout == "tokens" and spec.prefix_tokens > 0):
        return f"pool='prefix' needs tokens with a class/prefix token (sender is {spec.describe()})"
    return None


def pooled_width(mode: str, spec: ActivationSpec) -> int:
    """Width of the vector :func:`pool` makes from ``spec``."""
    concrete = pool_mode(mode, spec)
    if concrete == "flatten":
        return int(torch.Size(spec.shape).numel())
    return spec.channels


def pool(x: torch.Tensor, spec: ActivationSpec, mode: str) -> torch.Tensor:
    """A batched map, token sequence or vector as a ``(B, C')`` vector."""
    concrete = pool_mode(mode, spec)
    if concrete == "none":
        return x
    if concrete == "flatten":
        if spec.layout in MAP_LAYOUTS:
            return to_nchw(x, spec.layout).flatten(1)
        return x.flatten(1)
    if concrete == "prefix":
        return x[:, 0]
    _, grid = to_grid(x, spec)
    if concrete == "max":
        return grid.amax(dim=(2, 3))
    return grid.mean(dim=(2, 3))


def check_batch(acts: torch.Tensor, spec: ActivationSpec, side: str) -> None:
    """Raise a clear error when batched activations do not match their spec."""
    if tuple(acts.shape[1:]) != tuple(spec.shape):
        raise StitchError(
            f"{side} activations have per-sample shape {tuple(acts.shape[1:])}, but the stitch "
            f"was built for {spec.describe()}"
        )
