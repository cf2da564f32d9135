"""``digits``: scikit-learn's bundled 8×8 handwritten digits, the embedded default.

It ships inside scikit-learn (a core dependency), so it works on any machine with no download:
1797 images, values 0–16 scaled to uint8 0–255, one channel, split 80/20 per class with a fixed
seed (1437 train / 360 test).
"""

from __future__ import annotations

import numpy as np

from stitchcore.plugin import Dataset, DataSplits, StitchError

from ._split import DIGIT_CLASSES, DIGIT_PARITY, PARITY_NAMES, make_splits, stratified_split
from ._store import cached_arrays

__all__ = ["Digits"]


class Digits(Dataset):
    name = "digits"
    description = "scikit-learn's 8×8 handwritten digits (1797 images, embedded default)"
    coarse = DIGIT_PARITY
    coarse_classes = PARITY_NAMES

    def load(self, variant: str | None = None) -> DataSplits:
        if variant:
            raise StitchError(f"dataset 'digits' has no variants, got {variant!r}")
        arrays = cached_arrays("digits-v1", _decode, disk=False)  # decoding takes milliseconds
        return make_splits(self, arrays, DIGIT_CLASSES, source="sklearn.datasets.load_digits")


def _decode() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N×1×8×8
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels)
    return {
        "train_x": images[train],
        "train_y": labels[train],
        "test_x": images[test],
        "test_y": labels[test],
    }
