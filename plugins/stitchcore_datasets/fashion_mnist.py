"""``fashion-mnist``: Zalando's Fashion-MNIST (60k/10k, 28×28 grey, 10 clothing classes).

Found, in order, in ``fashion-mnist:DIR``, the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), ``$STITCHCORE_DATA/fashion-mnist``, or a previous
torchvision download in the user cache; downloaded there by torchvision when online. The four
IDX files are decoded once (about a second) and cached as ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

from stitchcore.plugin import Dataset, DataSplits, OfflineError, StitchError

from ._split import make_splits
from ._store import cached_arrays, data_roots, download_dir, file_key, offline
from .idx import read_idx

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "FILES",
    "FashionMNIST",
    "HOW_TO",
    "candidate_dirs",
    "find_files",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
HOW_TO = (
    "install the Debian package (sudo apt-get install dataset-fashion-mnist), or put the four "
    "IDX files in $STITCHCORE_DATA/fashion-mnist, or run once with network access"
)


def candidate_dirs() -> list[Path]:
    dirs = [DEBIAN_DIR]
    for root in data_roots():
        dirs += [root / "fashion-mnist", root / "FashionMNIST" / "raw", root]
    dirs.append(download_dir("fashion-mnist") / "FashionMNIST" / "raw")
    return dirs


def find_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


class FashionMNIST(Dataset):
    name = "fashion-mnist"
    description = "Fashion-MNIST, 60k/10k 28×28 grey (Debian dataset-fashion-mnist or download)"
    # Bansal et al. coarsen CIFAR-10 into objects vs animals; the Fashion-MNIST analogue groups
    # what is worn on the body, on the feet, and carried.
    coarse = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 6: 0, 5: 1, 7: 1, 9: 1, 8: 2}
    coarse_classes = ("clothing", "footwear", "bag")

    def locate(self, variant: str | None = None) -> dict[str, Path] | None:
        if variant:
            return find_files(Path(variant).expanduser())
        for d in candidate_dirs():
            files = find_files(d)
            if files:
                return files
        return None

    def unavailable(self) -> str | None:
        if self.locate() or not offline():
            return None
        return f"no Fashion-MNIST files found and offline; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        files = self.locate(variant)
        if files is None and variant:
            raise StitchError(
                f"no Fashion-MNIST IDX files ({', '.join(FILES.values())}) in {variant}"
            )
        if files is None:
            files = self._download()
        key = "fashion-mnist-" + file_key(*files.values())
        arrays = cached_arrays(key, lambda: _decode(files))
        return make_splits(self, arrays, CLASSES, source=str(files["train_x"].parent))

    def _download(self) -> dict[str, Path]:
        if offline():
            raise OfflineError(f"Fashion-MNIST is not on this machine and it is offline; {HOW_TO}")
        from torchvision.datasets import FashionMNIST as TV

        root = download_dir("fashion-mnist")
        TV(str(root), train=True, download=True)
        TV(str(root), train=False, download=True)
        files = find_files(root / "FashionMNIST" / "raw")
        if files is None:
            raise StitchError(f"torchvision downloaded Fashion-MNIST but no IDX files in {root}")
        return files


def _decode(files: dict[str, Path]) -> dict:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        arrays[f"{split}_x"] = arrays[f"{split}_x"][:, None]  # N×1×28×28
        arrays[f"{split}_y"] = arrays[f"{split}_y"].astype("int64")
    return arrays
