"""What flows through a cut: ActivationSpec, and what a model eats: InputSpec.

Specs are plain frozen dataclasses so they can be compared, hashed, printed and written to JSON.
Shapes are *per sample* (no batch dimension).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .errors import StitchError

__all__ = [
    "LAYOUTS",
    "MAX_INPUT_SIZE",
    "ActivationSpec",
    "InputSpec",
    "ModelHints",
    "check_input_size",
    "infer_activation_spec",
    "token_grid",
]

LAYOUTS = ("nchw", "nhwc", "tokens", "vector", "other")


@dataclass(frozen=True)
class ActivationSpec:
    """Per-sample shape, layout and dtype of the tensor crossing a cut.

    layout:
      - ``nchw``: feature map, channels first (CNNs);
      - ``nhwc``: feature map, channels last (e.g. timm's swin);
      - ``tokens``: ``(N, C)`` token sequence whose first ``prefix_tokens`` are class/register
        tokens and the rest a (near-)square grid of patches;
      - ``vector``: ``(C,)`` feature vector (after pooling);
      - ``other``: anything else (no standard family accepts it).
    """

    shape: tuple[int, ...]
    layout: str
    dtype: str = "float32"
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def channels(self) -> int:
        """Feature width: C for maps, tokens and vectors."""
        if self.layout == "nchw":
            return self.shape[0]
        return self.shape[-1]

    @property
    def spatial(self) -> tuple[int, int] | None:
        """(H, W) of a feature map, or of the patch grid of a token sequence; None for vectors."""
        if self.layout == "nchw":
            return (self.shape[1], self.shape[2])
        if self.layout == "nhwc":
            return (self.shape[0], self.shape[1])
        if self.layout == "tokens":
            return token_grid(self.shape[0] - self.prefix_tokens)
        return None

    def describe(self) -> str:
        dims = "×".join(str(s) for s in self.shape)
        extra = f", {self.prefix_tokens} prefix" if self.layout == "tokens" else ""
        return f"{dims} {self.layout}{extra}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ActivationSpec:
        return cls(
            shape=tuple(data["shape"]),
            layout=data["layout"],
            dtype=data.get("dtype", "float32"),
            prefix_tokens=data.get("prefix_tokens", 0),
        )


def token_grid(n: int) -> tuple[int, int]:
    """The most square (h, w) with h * w == n (h <= w)."""
    if n <= 0:
        return (0, 0)
    h = int(math.isqrt(n))
    while n % h:
        h -= 1
    return (h, n // h)


def infer_activation_spec(
    batched_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    spatial_layout: str = "nchw",
    prefix_tokens: int = 0,
) -> ActivationSpec:
    """Guess the layout of a batched activation from its rank and the model's hints.

    ``spatial_layout`` says how the model stores 4-D maps; ``prefix_tokens`` how many leading
    tokens a 3-D activation carries. Both come from plugins (``model_hints``) or defaults.
    """
    shape = tuple(batched_shape[1:])
    dtype = str(dtype).removeprefix("torch.")
    if len(shape) == 3:
        return ActivationSpec(shape, spatial_layout, dtype)
    if len(shape) == 2:
        n = shape[0]
        # a square token count is a bare patch grid (e.g. right after patch embedding, before
        # the class token is prepended): no prefix tokens there, whatever the model has later
        square = math.isqrt(n) ** 2 == n
        prefix = prefix_tokens if prefix_tokens < n and not (square and prefix_tokens) else 0
        if prefix and math.isqrt(n - prefix) ** 2 != n - prefix:
            prefix = prefix_tokens  # non-square grids (other aspect ratios) keep the hint
        return ActivationSpec(shape, "tokens", dtype, prefix)
    if len(shape) == 1:
        return ActivationSpec(shape, "vector", dtype)
    return ActivationSpec(shape, "other", dtype)


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: per-sample shape and dtype of its (first) input, plus preprocessing.

    ``kind`` is ``image`` (float ``C×H×W``) or ``tokens`` (integer ids ``L``).
    ``mean``/``std`` are per-channel normalisation applied after scaling pixels to [0, 1].
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "image"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def example(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """A deterministic random input of this spec (batch first)."""
        gen = torch.Generator().manual_seed(seed)
        if self.kind == "tokens":
            high = int(self.extra.get("vocab_size", 100))
            return torch.randint(0, high, (batch, *self.shape), generator=gen)
        dtype = getattr(torch, self.dtype)
        return torch.randn((batch, *self.shape), generator=gen).to(dtype)

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "kind": self.kind,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


@dataclass
class ModelHints:
    """What a plugin knows about a model that tracing cannot tell.

    cuts: default cut names (module paths), in forward order, starting with the stem.
    input: the model's input spec (shape, preprocessing).
    spatial_layout: how 4-D activations are stored (``nchw`` or ``nhwc``).
    prefix_tokens: class/register tokens at the front of 3-D (token) activations.
    """

    cuts: list[str] | None = None
    input: InputSpec | None = None
    spatial_layout: str = "nchw"
    prefix_tokens: int = 0


#: The largest ``--input-size`` any command takes (4× the largest common ImageNet resolution):
#: a guard against a typo that would allocate gigabytes per image.
MAX_INPUT_SIZE = 2048


def check_input_size(size: int | None) -> None:
    """Refuse an ``--input-size`` outside 8..MAX_INPUT_SIZE pixels (None: the default)."""
    if size is not None and not 8 <= size <= MAX_INPUT_SIZE:
        raise StitchError(f"--input-size must be in 8..{MAX_INPUT_SIZE} pixels, got {size}")
