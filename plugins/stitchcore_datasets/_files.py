"""Image files read one at a time: the lazy source behind ``imagefolder`` and ``imagenet``.

Scanning a folder lists file names and labels only (no file is opened, not even stat-ed), so an
ImageNet-sized tree is listed in seconds and ``--train-size``/``--test-size`` subset the list
before anything is decoded. ``ImageFiles[i]`` opens and decodes one file with PIL and returns a
``C×H×W`` uint8 tensor; the core reads it through a DataLoader with workers.

Paths are kept as one byte buffer plus offsets (not a list of ``str``): a million paths cost
tens of MB, and forked DataLoader workers do not copy them page by page as Python refcounts
touch each string.

Unreadable files (truncated, not an image): the default policy is *strict*: reading one raises
a one-line StitchError that names the file, since a label tensor is complete and a sample cannot
silently vanish mid-epoch. ``verify_files`` decodes every file up front (threads; PIL releases
the GIL while decoding) so a caller can leave the bad ones out and count them instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from stitchcore.plugin import StitchError

__all__ = [
    "EXTENSIONS",
    "GREY_MODES",
    "ImageFiles",
    "decode_image",
    "list_images",
    "scan_classes",
    "sniff_mode",
    "verify_files",
]

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes that hold one grey channel; a dataset whose sampled images are all grey reads as L.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SNIFF_FILES = 16


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, following links, skipping hidden entries),
    sorted, as paths relative to ``folder``. Names only: nothing is opened or stat-ed."""
    found = []
    base = os.fspath(folder)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, base)
        for name in filenames:
            if _is_image(name):
                found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found)


def scan_classes(folder: Path, *, allow_empty: bool = False) -> dict[str, list[str]]:
    """``{class: [image paths]}`` for ``folder/CLASS/…`` (sorted class names, sorted paths).

    An empty class folder is an error unless ``allow_empty`` (a test split may lack classes):
    a class with no images would still count as a class and skew every accuracy.
    """
    try:
        entries = sorted(
            e.name
            for e in os.scandir(folder)
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)
        )
    except OSError as exc:
        raise StitchError(f"cannot list {folder}: {exc.strerror or exc}") from None
    if not entries:
        loose = any(_is_image(n) for n in os.listdir(folder))
        raise StitchError(
            f"no class folders in {folder}"
            + (" (it holds images directly; put them in one folder per class)" if loose else "")
            + f"; looked for {folder}/CLASS/IMAGE with {', '.join(EXTENSIONS)}"
        )
    classes = {}
    for name in entries:
        files = list_images(folder / name)
        if not files and not allow_empty:
            raise StitchError(
                f"class folder {folder / name} holds no images (looked for "
                f"{', '.join(EXTENSIONS)}); add images or remove the folder"
            )
        classes[name] = [os.path.join(os.fspath(folder), name, f) for f in files]
    if not any(classes.values()):
        raise StitchError(
            f"no images in {folder} (looked for {', '.join(EXTENSIONS)} in one folder per class)"
        )
    return classes


def sniff_mode(paths: Sequence[str]) -> str:
    """``L`` when every sampled image (up to 16, spread over the list) is grey, else ``RGB``.

    Opening an image reads its header only, so this costs milliseconds; unreadable files are
    passed over here and reported when read.
    """
    from PIL import Image

    if not paths:
        return "RGB"
    step = max(1, len(paths) // SNIFF_FILES)
    modes = set()
    for path in list(paths)[::step][:SNIFF_FILES]:
        try:
            with Image.open(path) as im:
                modes.add(im.mode)
        except Exception:  # noqa: BLE001 - reported when the file is read
            continue
    return "L" if modes and modes <= GREY_MODES else "RGB"


def decode_image(path: str, mode: str = "RGB", size: int | None = None) -> torch.Tensor:
    """One image file as a ``C×H×W`` uint8 tensor in ``mode`` (``RGB`` or ``L``).

    With ``size``, the shorter side is resized to ``size`` and the centre ``size×size`` cropped
    (JPEGs are decoded at a reduced scale first when that is still large enough: much faster).
    Decoding errors propagate as PIL raises them; ``ImageFiles`` turns them into StitchError.
    """
    from PIL import Image

    with Image.open(path) as im:
        if size is not None:
            im.draft(mode, (size, size))
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # avoids PIL's palette-transparency warning on convert
        im = im.convert(mode)
        if size is not None:
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.array(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class ImageFiles(torch.utils.data.Dataset):
    """A lazy split: ``len`` files, ``self[i]`` decodes file ``i`` (see the module docstring).

    ``mode`` (``RGB``/``L``) is the same for every image of a dataset, so batches stack;
    ``size`` (optional) resizes and centre-crops every image to ``size×size`` at decode time.
    """

    def __init__(self, paths: Sequence[str], *, mode: str = "RGB", size: int | None = None) -> None:
        if mode not in ("RGB", "L"):
            raise StitchError(f"image mode must be RGB or L, got {mode!r}")
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.mode, self.size = mode, size

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, i: int) -> str:
        """The file behind sample ``i``."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} images")
        i %= n
        return os.fsdecode(self._blob[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.path(int(i))
        try:
            return decode_image(path, self.mode, self.size)
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, …
            raise StitchError(f"cannot read image {path}: {_reason(exc)}") from None

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.size else ""
        return f"ImageFiles({len(self)} files, mode={self.mode}{size})"


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def verify_files(paths: Sequence[str], mode: str = "RGB", threads: int | None = None) -> dict:
    """Fully decode every file; ``{index: reason}`` for those that fail (truncated, not an
    image). Threads, because PIL releases the GIL while it decodes."""
    from PIL import Image

    def check(i: int) -> tuple[int, str | None]:
        try:
            with Image.open(paths[i]) as im:
                im.convert(mode).load()
        except Exception as exc:  # noqa: BLE001 - any decoding failure marks the file bad
            return i, _reason(exc)
        return i, None

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, range(len(paths)), chunksize=64)
        return {i: why for i, why in results if why is not None}
