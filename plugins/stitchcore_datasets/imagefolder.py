"""``imagefolder:PATH[@SIZE]``: the user's own images in torchvision's ImageFolder layout.

``PATH/<class>/<image>`` (one folder per class, sorted names give class indices). With
``PATH/train/`` and ``PATH/test/`` subfolders those are the splits; otherwise the images are
split 80/20 per class with a fixed seed. Every image is converted to RGB, its shorter side
resized to ``SIZE`` (default 64) and centre-cropped to ``SIZE×SIZE``, and stored as uint8: small
enough to hold in memory, and ``adapt()`` resizes to each model's input. Decoding is slow, so the
arrays are cached; the cache key covers every file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from stitchcore.datasets import Dataset, DataSplits
from stitchcore.errors import StitchError

from ._split import make_splits, stratified_split
from ._store import FORMAT, cached_arrays

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_SIZE = 64
USAGE = "imagefolder needs a directory: --data imagefolder:PATH[@SIZE]"


def parse_variant(variant: str) -> tuple[Path, int]:
    """``(path, size)`` from ``PATH[@SIZE]``."""
    path, sep, size = variant.rpartition("@")
    if sep and size.isdigit() and int(size) > 0:
        return Path(path).expanduser(), int(size)
    return Path(variant).expanduser(), DEFAULT_SIZE


def scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and ``(file, class index)`` pairs of one ImageFolder directory."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for index, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() in EXTENSIONS and f.is_file():
                items.append((f, index))
    return classes, items


def load_image(path: Path, size: int) -> np.ndarray:
    """``3×size×size`` uint8: RGB, shorter side resized to ``size``, centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _stack(items: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([load_image(f, size) for f, _ in items]) if items else np.zeros((0, 3, size, size))
    return x.astype(np.uint8), np.array([c for _, c in items], dtype=np.int64)


def _key(root: Path, size: int, items: list[tuple[Path, int]]) -> str:
    h = hashlib.sha1(f"{FORMAT}|{root.resolve()}|{size}".encode())
    for f, c in items:
        st = f.stat()
        h.update(f"{f}|{c}|{st.st_size}|{st.st_mtime_ns}".encode())
    return "imagefolder-" + h.hexdigest()[:16]


class ImageFolder(Dataset):
    name = "imagefolder"
    description = "your images, one folder per class (train/ and test/ if present), uint8 SIZE²"
    variants = ("PATH[@SIZE]",)

    def load(self, variant: str | None = None) -> DataSplits:
        if not variant:
            raise StitchError(USAGE)
        root, size = parse_variant(variant)
        if not root.is_dir():
            raise StitchError(f"imagefolder: {root} is not a directory")
        train_dir, test_dir = root / "train", root / "test"
        if train_dir.is_dir() and test_dir.is_dir():
            classes, train_items = scan(train_dir)
            test_classes, test_items = scan(test_dir)
            unknown = sorted(set(test_classes) - set(classes))
            if unknown:
                raise StitchError(f"imagefolder: test classes missing from train/: {unknown}")
            remap = {i: classes.index(c) for i, c in enumerate(test_classes)}
            test_items = [(f, remap[c]) for f, c in test_items]
            layout = "train/test folders"
        else:
            classes, items = scan(root)
            labels = np.array([c for _, c in items], dtype=np.int64)
            train_idx, test_idx = stratified_split(labels) if items else ([], [])
            train_items = [items[i] for i in train_idx]
            test_items = [items[i] for i in test_idx]
            layout = "stratified 80/20 split"
        if not train_items or not test_items:
            raise StitchError(
                f"imagefolder: no images in {root} for both splits (need PATH/<class>/<image>"
                f" with {', '.join(EXTENSIONS)}; a class with one image has none in the test split)"
            )

        def decode() -> dict[str, np.ndarray]:
            train_x, train_y = _stack(train_items, size)
            test_x, test_y = _stack(test_items, size)
            return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}

        arrays = cached_arrays(_key(root, size, train_items + test_items), decode)
        return make_splits(
            self, arrays, classes, name=f"imagefolder:{variant}", source=str(root), layout=layout
        )
