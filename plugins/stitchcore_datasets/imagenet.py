"""``imagenet:PATH[@OPTIONS]``: ImageNet-1k (ILSVRC 2012) from a copy the user has, read lazily.

Two forms of ``PATH`` are understood; nothing is ever downloaded or extracted:

- torchvision's layout: ``PATH/meta.bin`` (or the devkit ``ILSVRC2012_devkit_t12.tar.gz``, which
  torchvision parses into ``meta.bin`` once) plus the extracted ``PATH/train/WNID/*.JPEG`` and
  ``PATH/val/WNID/*.JPEG``. ``torchvision.datasets.ImageNet(PATH, split=...)`` lists both splits
  and names the classes ("tench", "goldfish", …); the files are then read by ``ImageFiles``.
  Only the archives (``ILSVRC2012_img_*.tar``) and no folders: refused with how to extract them,
  since torchvision would silently write ~150 GB.
- an ImageNet-style folder without the devkit: ``PATH/train/CLASS/*`` and ``PATH/val/CLASS/*``,
  read by the imagefolder reader (class names are the folder names, e.g. WordNet ids).

``val`` is the test split (``meta["test_split"]``); the class list comes from ``train/``. The
options after ``@`` are imagefolder's (``SIZE``, ``rgb``/``grey``, ``verify``). Without a path,
``$STITCHCORE_DATA/imagenet`` is used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stitchcore.plugin import Dataset, DataSplits, StitchError

from ._files import ImageFiles
from ._store import data_roots
from .imagefolder import Options, drop_unreadable, load_folder, parse_variant

__all__ = ["DEVKIT", "ImageNet", "META_FILE", "class_names"]

META_FILE = "meta.bin"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
HOW_TO = (
    "use --data imagenet:PATH with PATH/train/CLASS/*.JPEG and PATH/val/CLASS/*.JPEG "
    "(plus torchvision's meta.bin or the devkit for class names), or put it in "
    "$STITCHCORE_DATA/imagenet"
)


def default_root() -> Path | None:
    for root in data_roots():
        if (root / "imagenet" / "train").is_dir():
            return root / "imagenet"
    return None


def class_names(names_per_wnid: list[tuple[str, ...]], wnids: list[str]) -> list[str]:
    """One readable name per class: the first of its synonyms, with the WordNet id added where
    two classes share it (ImageNet has two "crane"s and two "maillot"s)."""
    first = [names[0] if names else w for names, w in zip(names_per_wnid, wnids)]
    twice = {n for n in first if first.count(n) > 1}
    return [f"{n} ({w})" if n in twice else n for n, w in zip(first, wnids)]


def _torchvision_splits(root: Path, opts: Options, name: str) -> DataSplits:
    """Both splits listed by ``torchvision.datasets.ImageNet`` (meta.bin/devkit present)."""
    from torchvision.datasets import ImageNet as TV

    splits = {}
    for split in ("train", "val"):
        try:
            splits[split] = TV(str(root), split=split)
        except (RuntimeError, FileNotFoundError, KeyError, OSError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise StitchError(f"imagenet: torchvision cannot read {root / split}: {why}") from None
    train, val = splits["train"], splits["val"]
    unknown = sorted(set(val.wnids) - set(train.wnids))
    if unknown:
        raise StitchError(
            f"imagenet: val/ has classes that train/ lacks: {', '.join(unknown[:10])}"
        )
    # ImageFolder numbers the classes of each split folder on its own: map val's to train's
    remap = torch.tensor([train.wnid_to_idx[w] for w in val.wnids], dtype=torch.int64)
    paths = {s: [p for p, _ in d.samples] for s, d in splits.items()}
    mode = opts.mode or "RGB"  # ImageNet is colour; its few grey JPEGs become RGB
    train_part = (paths["train"], list(train.targets))
    test_part = (paths["val"], remap[torch.tensor(val.targets, dtype=torch.int64)].tolist())
    skipped = None
    if opts.verify:
        train_part, test_part, skipped = drop_unreadable(
            root, train_part, test_part, mode, "imagenet"
        )
    meta = {
        "layout": "torchvision ImageNet (devkit class names)",
        "test_split": "val",
        "source": str(root),
        "wnids": list(train.wnids),
        "mode": mode,
        "size": opts.size,
    }
    if skipped is not None:
        meta["skipped"] = skipped
    return DataSplits(
        name=name,
        train_x=ImageFiles(train_part[0], mode=mode, size=opts.size),
        train_y=torch.tensor(train_part[1], dtype=torch.int64),
        test_x=ImageFiles(test_part[0], mode=mode, size=opts.size),
        test_y=torch.tensor(test_part[1], dtype=torch.int64),
        num_classes=len(train.wnids),
        classes=class_names(train.classes, train.wnids),
        meta=meta,
    )


class ImageNet(Dataset):
    name = "imagenet"
    description = "ImageNet-1k train/val you have (torchvision layout or folders), read lazily"
    variants = ("PATH[@SIZE,rgb|grey,verify]",)

    def unavailable(self) -> str | None:
        return None if default_root() else f"no ImageNet found; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        if variant:
            root, opts = parse_variant(variant, prefix="imagenet")
        else:
            root, opts = default_root(), Options()
            if root is None:
                raise StitchError(f"imagenet: {HOW_TO}")
        if opts.test_split == "test":
            raise StitchError(
                "imagenet: the test split is val/ (ImageNet's test set has no labels)"
            )
        if not root.is_dir():
            raise StitchError(f"imagenet: {root} is not a directory")
        name = f"imagenet:{variant}" if variant else "imagenet"
        if not all((root / s).is_dir() for s in ("train", "val")):
            if any((root / a).is_file() for a in ARCHIVES):
                raise StitchError(
                    f"imagenet: {root} holds the ILSVRC2012 archives but not the extracted "
                    'train/ and val/ folders; extract them once, e.g. python -c "from '
                    f"torchvision.datasets import ImageNet; ImageNet('{root}', split='train'); "
                    f"ImageNet('{root}', split='val')\""
                )
            raise StitchError(f"imagenet: {root} lacks train/ or val/; {HOW_TO}")
        if (root / META_FILE).is_file() or (root / DEVKIT).is_file():
            return _torchvision_splits(root, opts, name)
        opts = Options(opts.size, opts.mode, "val", opts.verify)
        return load_folder(root, opts, name=name, tag="imagenet")
