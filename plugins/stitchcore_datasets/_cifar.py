"""Readers for CIFAR-10/100 in their official on-disk formats (torchvision's layout included).

The python batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
``cifar-100-python/train``, ``test``, ``meta``: exactly what ``torchvision.datasets.CIFAR10`` and
``CIFAR100`` read) are pickles. torchvision opens them with ``pickle.load`` after checking each
file's MD5 against the official archive, which refuses any other copy of the data (re-packed,
subset, test fixtures) with "Dataset not found or corrupted". Here they are opened with an
unpickler that admits only the numpy constructors a batch needs, so any well-formed batch loads
and a planted file still cannot run code. The binary layouts (``cifar-10-batches-bin``,
``cifar-100-binary``) are fixed-size records.

Every failure (not a pickle, not a batch, data not ``N×3072``, labels that do not match) is a
one-line StitchError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from stitchcore.plugin import StitchError

from ._store import data_roots, download_dir

__all__ = [
    "PIXELS",
    "find_files",
    "read_bin",
    "read_names",
    "read_py",
    "search_roots",
]

PIXELS = 3 * 32 * 32


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, bytes, str and numpy arrays."""

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
            raise StitchError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, what: str) -> dict:
    """The dict in a CIFAR pickle, keys as ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except StitchError as exc:
        raise StitchError(f"{path}: {exc} from a {what} file") from None
    except OSError as exc:
        raise StitchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, ValueError, …
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise StitchError(f"{path}: not a {what} file (not a readable pickle: {why})") from None
    if not isinstance(obj, dict):
        raise StitchError(f"{path}: not a {what} file (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _labels(path: Path, batch: dict, key: str, n: int, classes: int, what: str) -> np.ndarray:
    if key not in batch:
        raise StitchError(f"{path}: not a {what} file (no {key!r})")
    try:
        labels = np.asarray(batch[key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise StitchError(f"{path}: {key!r} are not integers") from None
    if len(labels) != n:
        raise StitchError(f"{path}: {n} images but {len(labels)} {key!r}")
    if n and not (0 <= labels.min() and labels.max() < classes):
        raise StitchError(f"{path}: {key!r} outside 0..{classes - 1}")
    return labels


def read_py(
    path: Path, what: str, label_keys: dict[str, int]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(images N×3×32×32 uint8, {label key: labels})`` from one python batch.

    ``label_keys`` maps each label key to its class count (``{"labels": 10}`` for CIFAR-10,
    ``{"fine_labels": 100, "coarse_labels": 20}`` for CIFAR-100; a missing ``coarse_labels``
    is allowed and left out).
    """
    batch = _unpickle(path, what)
    if "data" not in batch:
        raise StitchError(f"{path}: not a {what} file (no 'data')")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = "×".join(map(str, getattr(data, "shape", ()))) or type(data).__name__
        raise StitchError(f"{path}: data is {shape}, expected N×{PIXELS} (3×32×32 per image)")
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise StitchError(f"{path}: pixel values outside 0..255")
        data = data.astype(np.uint8)
    n = len(data)
    labels = {
        key: _labels(path, batch, key, n, k, what)
        for key, k in label_keys.items()
        if key in batch or key != "coarse_labels"
    }
    return data.reshape(n, 3, 32, 32), labels


def read_bin(path: Path, label_keys: dict[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One binary batch: records of ``len(label_keys)`` label bytes then 3072 pixel bytes."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise StitchError(f"cannot read {path}: {exc.strerror or exc}") from None
    record = len(label_keys) + PIXELS
    if raw.size == 0 or raw.size % record:
        raise StitchError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte records"
        )
    raw = raw.reshape(-1, record)
    labels = {}
    for j, (key, k) in enumerate(label_keys.items()):
        labels[key] = raw[:, j].astype(np.int64)
        if labels[key].max() >= k:
            raise StitchError(f"{path}: label byte {j} outside 0..{k - 1}")
    return raw[:, len(label_keys) :].reshape(-1, 3, 32, 32), labels


def read_names(path: Path, key: str, count: int, default: tuple[str, ...], what: str) -> list[str]:
    """Class names from a meta pickle (``batches.meta``/``meta``) when present, else ``default``."""
    if not path.is_file():
        return list(default)
    names = _unpickle(path, what).get(key)
    if not isinstance(names, list) or len(names) != count:
        raise StitchError(f"{path}: {key!r} is not a list of {count} names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def find_files(path: Path, layouts: tuple[tuple[str, str, tuple[str, ...]], ...]):
    """``(format, folder, [files])`` for the first layout whose files are all under ``path``
    (the layout folder itself or its parent), or None. A layout is ``(format, folder, names)``."""
    for fmt, folder, names in layouts:
        for d in (path, path / folder):
            files = [d / n for n in names]
            if all(f.is_file() for f in files):
                return fmt, d, files
    return None


def search_roots(name: str) -> list[Path]:
    """``$STITCHCORE_DATA`` roots (and their ``NAME/`` subfolders), then the download cache."""
    roots = []
    for root in data_roots():
        roots += [root, root / name, root / name.replace("cifar", "cifar-")]
    roots.append(download_dir(name))
    return roots
