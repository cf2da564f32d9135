"""``cifar10``: CIFAR-10 (50k/10k, 3×32×32) from a directory the user has, or a download.

Looked for in ``cifar10:PATH``, then ``$STITCHCORE_DATA`` (and its ``cifar10/`` subfolder), then
a previous download in the user cache; downloaded there with torchvision when online. Both
official layouts are read: torchvision's ``cifar-10-batches-py`` (the files
``torchvision.datasets.CIFAR10`` reads; see ``_cifar.py`` for why they are read here rather than
through that class) and the binary ``cifar-10-batches-bin``. The 150 MB of pixels are held in
memory as one uint8 tensor (the fast path) and cached decoded as ``.npz``. Class names come from
``batches.meta`` when present. No registry package ships CIFAR-10, so on an offline machine
without it ``unavailable()`` says where to put it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stitchcore.plugin import Dataset, DataSplits, OfflineError, StitchError

from ._cifar import find_files, read_bin, read_names, read_py, search_roots
from ._split import make_splits
from ._store import cached_arrays, download_dir, file_key, offline

__all__ = ["BIN_DIR", "CLASSES", "Cifar10", "LAYOUTS", "META", "PY_DIR", "TRAIN_BATCHES"]

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# torchvision.datasets.CIFAR10's base_folder, train_list, test_list and meta file (a test checks
# they still agree); the binary layout is the one the CIFAR page also publishes.
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
META = ("batches.meta", "label_names")
LAYOUTS = (
    ("py", PY_DIR, (*TRAIN_BATCHES, "test_batch")),
    ("bin", BIN_DIR, tuple(f"{b}.bin" for b in (*TRAIN_BATCHES, "test_batch"))),
)
HOW_TO = (
    "download CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html), unpack it and use "
    "--data cifar10:PATH or set STITCHCORE_DATA=PATH, or run once with network access"
)


def _decode(fmt: str, files: list[Path]) -> dict[str, np.ndarray]:
    parts = [
        read_py(f, "CIFAR-10 batch", {"labels": 10}) if fmt == "py" else read_bin(f, {"labels": 10})
        for f in files
    ]
    train = parts[:-1]
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y["labels"] for _, y in train]),
        "test_x": parts[-1][0],
        "test_y": parts[-1][1]["labels"],
    }


class Cifar10(Dataset):
    name = "cifar10"
    description = "CIFAR-10, 50k/10k 3×32×32 (cifar10:PATH, $STITCHCORE_DATA, or download)"
    variants = ("PATH",)
    # Bansal et al.'s coarse task: vehicles ("objects") vs animals.
    coarse = {0: 0, 1: 0, 8: 0, 9: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}
    coarse_classes = ("object", "animal")

    def locate(self, variant: str | None = None):
        """``(format, folder, files)`` of the first CIFAR-10 copy found, or None."""
        roots = [Path(variant).expanduser()] if variant else search_roots("cifar10")
        for root in roots:
            found = find_files(root, LAYOUTS)
            if found:
                return found
        return None

    def unavailable(self) -> str | None:
        if self.locate() or not offline():
            return None
        return f"no CIFAR-10 batches found and offline; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        found = self.locate(variant)
        if found is None and variant:
            raise StitchError(f"no CIFAR-10 batches ({PY_DIR} or {BIN_DIR}) in {variant}")
        if found is None:
            found = self._download()
        fmt, folder, files = found
        arrays = cached_arrays("cifar10-" + file_key(*files), lambda: _decode(fmt, files))
        names = CLASSES
        if fmt == "py":
            names = read_names(folder / META[0], META[1], 10, CLASSES, "CIFAR-10 meta")
        return make_splits(self, arrays, list(names), source=str(folder), format=fmt)

    def _download(self):
        if offline():
            raise OfflineError(f"CIFAR-10 is not on this machine and it is offline; {HOW_TO}")
        from torchvision.datasets import CIFAR10

        root = download_dir("cifar10")
        CIFAR10(str(root), train=True, download=True)
        found = find_files(root, LAYOUTS)
        if found is None:
            raise StitchError(f"torchvision downloaded CIFAR-10 but no batches in {root}")
        return found
