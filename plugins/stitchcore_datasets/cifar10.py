"""``cifar10``: CIFAR-10 (50k/10k, 3×32×32) from a directory the user has, or a download.

Looked for in ``cifar10:PATH``, then ``$STITCHCORE_DATA`` (and its ``cifar10/`` subfolder), then
a previous download in the user cache; downloaded there with torchvision when online. Both
official layouts are read: torchvision's ``cifar-10-batches-py`` and the binary
``cifar-10-batches-bin``. The python batches are pickles, so they are opened with an unpickler
that only admits the numpy array constructors they need: a planted file cannot run code.
No registry package ships CIFAR-10, so on an offline machine without it ``unavailable()`` says
where to put it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from stitchcore.datasets import Dataset, DataSplits
from stitchcore.errors import OfflineError, StitchError

from ._split import make_splits
from ._store import cached_arrays, data_roots, download_dir, file_key, offline

CLASSES = [
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
]
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
HOW_TO = (
    "download CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html), unpack it and use "
    "--data cifar10:PATH or set STITCHCORE_DATA=PATH, or run once with network access"
)


def find_batches(path: Path) -> tuple[str, list[Path]] | None:
    """``(format, [train batches..., test batch])`` under ``path`` (the batches folder itself
    or its parent), or None."""
    for fmt, folder, ext in (("py", PY_DIR, ""), ("bin", BIN_DIR, ".bin")):
        for d in (path, path / folder):
            files = [d / (b + ext) for b in [*TRAIN_BATCHES, "test_batch"]]
            if all(f.is_file() for f in files):
                return fmt, files
    return None


def candidate_roots() -> list[Path]:
    roots = []
    for root in data_roots():
        roots += [root, root / "cifar10", root / "cifar-10"]
    roots.append(download_dir("cifar10"))
    return roots


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise StitchError(f"refusing to unpickle {module}.{name} from a CIFAR-10 batch file")
        return super().find_class(module, name)


def read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(batch, dict):
        raise StitchError(f"{path}: not a CIFAR-10 batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    labels = batch.get("labels", batch.get("fine_labels"))
    if "data" not in batch or labels is None:
        raise StitchError(f"{path}: not a CIFAR-10 batch (no data/labels)")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(labels, dtype=np.int64)


def read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + 3 * 32 * 32
    if raw.size % record:
        raise StitchError(f"{path}: size is not a multiple of a CIFAR-10 record ({record} bytes)")
    raw = raw.reshape(-1, record)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def _decode(fmt: str, files: list[Path]) -> dict[str, np.ndarray]:
    read = read_py_batch if fmt == "py" else read_bin_batch
    parts = [read(f) for f in files]
    train = parts[:-1]
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": parts[-1][0],
        "test_y": parts[-1][1],
    }


class Cifar10(Dataset):
    name = "cifar10"
    description = "CIFAR-10, 50k/10k 3×32×32 (cifar10:PATH, $STITCHCORE_DATA, or download)"
    variants = ("PATH",)
    # Bansal et al.'s coarse task: vehicles ("objects") vs animals.
    coarse = {0: 0, 1: 0, 8: 0, 9: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}
    coarse_classes = ("object", "animal")

    def locate(self, variant: str | None = None) -> tuple[str, list[Path]] | None:
        roots = [Path(variant).expanduser()] if variant else candidate_roots()
        for root in roots:
            found = find_batches(root)
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
        fmt, files = found
        arrays = cached_arrays("cifar10-" + file_key(*files), lambda: _decode(fmt, files))
        return make_splits(self, arrays, CLASSES, source=str(files[0].parent))

    def _download(self) -> tuple[str, list[Path]]:
        if offline():
            raise OfflineError(f"CIFAR-10 is not on this machine and it is offline; {HOW_TO}")
        from torchvision.datasets import CIFAR10

        root = download_dir("cifar10")
        CIFAR10(str(root), train=True, download=True)
        found = find_batches(root)
        if found is None:
            raise StitchError(f"torchvision downloaded CIFAR-10 but no batches in {root}")
        return found
