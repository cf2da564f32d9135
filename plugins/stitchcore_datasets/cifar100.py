"""``cifar100``: CIFAR-100 (50k/10k, 3×32×32, 100 classes in 20 superclasses).

Found like ``cifar10``: ``cifar100:PATH``, then ``$STITCHCORE_DATA`` (and its ``cifar100/``
subfolder), then a previous download in the user cache; downloaded there with torchvision when
online. Layouts: torchvision's ``cifar-100-python`` (``train``, ``test``, ``meta``: the files
``torchvision.datasets.CIFAR100`` reads, through the safe reader of ``_cifar.py``) and the binary
``cifar-100-binary`` (``train.bin``, ``test.bin``: a coarse and a fine label byte per record).

``--coarse`` groups the 100 classes into the 20 published superclasses. The map is derived from
the files' own ``coarse_labels`` (each fine class must carry exactly one coarse label, else the
file is refused) and recorded in ``meta["coarse"]``; ``Cifar100.coarse`` is the published map,
which the official files reproduce exactly (tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stitchcore.plugin import Dataset, DataSplits, OfflineError, StitchError

from ._cifar import find_files, read_bin, read_names, read_py, search_roots
from ._split import make_splits
from ._store import cached_arrays, download_dir, file_key, offline

__all__ = ["COARSE", "COARSE_CLASSES", "CLASSES", "Cifar100", "LAYOUTS", "PY_DIR", "coarse_map"]

# The CIFAR page's superclass table, in label order (fine and coarse names sort alphabetically).
_GROUPS = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_CLASSES = tuple(_GROUPS)
CLASSES = tuple(sorted(c for group in _GROUPS.values() for c in group))
COARSE = {CLASSES.index(c): k for k, group in enumerate(_GROUPS.values()) for c in group}

PY_DIR, BIN_DIR = "cifar-100-python", "cifar-100-binary"
LAYOUTS = (
    ("py", PY_DIR, ("train", "test")),
    ("bin", BIN_DIR, ("train.bin", "test.bin")),
)
LABELS = {"coarse_labels": 20, "fine_labels": 100}  # the binary records' byte order
HOW_TO = (
    "download CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html), unpack it and use "
    "--data cifar100:PATH or set STITCHCORE_DATA=PATH, or run once with network access"
)


def _decode(fmt: str, files: list[Path]) -> dict[str, np.ndarray]:
    arrays = {}
    for split, f in zip(("train", "test"), files):
        x, y = read_py(f, "CIFAR-100 batch", LABELS) if fmt == "py" else read_bin(f, LABELS)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y["fine_labels"]
        if "coarse_labels" in y:
            arrays[f"{split}_coarse"] = y["coarse_labels"]
    return arrays


def coarse_map(fine: np.ndarray, coarse: np.ndarray, where: Path) -> dict[int, int]:
    """Fine class → superclass as the files label them; a fine class with two superclasses is
    an error naming the file."""
    pairs = np.unique(np.stack([fine, coarse], 1), axis=0)
    found: dict[int, int] = {}
    for f, c in pairs.tolist():
        if found.setdefault(f, c) != c:
            raise StitchError(f"{where}: fine class {f} has coarse labels {found[f]} and {c}")
    return found


class Cifar100(Dataset):
    name = "cifar100"
    description = "CIFAR-100, 50k/10k 3×32×32, 20 superclasses (cifar100:PATH or download)"
    variants = ("PATH",)
    coarse = COARSE
    coarse_classes = COARSE_CLASSES

    def locate(self, variant: str | None = None):
        """``(format, folder, files)`` of the first CIFAR-100 copy found, or None."""
        roots = [Path(variant).expanduser()] if variant else search_roots("cifar100")
        for root in roots:
            found = find_files(root, LAYOUTS)
            if found:
                return found
        return None

    def unavailable(self) -> str | None:
        if self.locate() or not offline():
            return None
        return f"no CIFAR-100 files found and offline; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        found = self.locate(variant)
        if found is None and variant:
            raise StitchError(f"no CIFAR-100 files ({PY_DIR} or {BIN_DIR}) in {variant}")
        if found is None:
            found = self._download()
        fmt, folder, files = found
        arrays = cached_arrays("cifar100-" + file_key(*files), lambda: _decode(fmt, files))
        names, coarse_names = list(CLASSES), list(COARSE_CLASSES)
        if fmt == "py":
            meta_file = folder / "meta"
            names = read_names(meta_file, "fine_label_names", 100, CLASSES, "CIFAR-100 meta")
            coarse_names = read_names(
                meta_file, "coarse_label_names", 20, COARSE_CLASSES, "CIFAR-100 meta"
            )
        meta = {"source": str(folder), "format": fmt}
        if "train_coarse" in arrays:
            derived = coarse_map(arrays["train_y"], arrays["train_coarse"], files[0])
            if len(derived) == 100:  # every class seen: the files define the grouping
                meta.update(coarse=derived, coarse_classes=coarse_names)
                meta["coarse_source"] = "files" if derived != COARSE else "files (= published)"
        return make_splits(self, arrays, names, **meta)

    def _download(self):
        if offline():
            raise OfflineError(f"CIFAR-100 is not on this machine and it is offline; {HOW_TO}")
        from torchvision.datasets import CIFAR100

        root = download_dir("cifar100")
        CIFAR100(str(root), train=True, download=True)
        found = find_files(root, LAYOUTS)
        if found is None:
            raise StitchError(f"torchvision downloaded CIFAR-100 but no files in {root}")
        return found
