"""``imagefolder:PATH[@OPTIONS]``: your own images, one folder per class, read lazily.

Two layouts (the class list always comes from sorted folder names):

- split folders: ``PATH/train/CLASS/*`` plus a test split ``PATH/val/CLASS/*`` (also ``valid``,
  ``validation`` or ``test``; ``val`` first when several exist, ``@test`` picks ``test``).
  Classes come from ``train/``; a class missing from the test split is fine, a test class not in
  ``train/`` is an error naming it. ``meta["test_split"]`` says which folder is the test split.
  ``PATH/train/`` alone is split 80/20 per class like a flat folder.
- flat: ``PATH/CLASS/*``, split 80/20 per class with a fixed seed (``meta["layout"]``).

A folder that mixes split names with other folders (``train/ val/ cats/``) is refused: it used
to read as classes named "train" and "val".

Nothing is decoded at load: the splits are ``ImageFiles`` sources (``_files.py``) that decode
one file per access, so ``--train-size``/``--test-size`` read only the files they keep. Images
keep their own size (the core resizes each sample to the model input); ``@SIZE`` resizes the
shorter side and centre-crops at decode time. Mode: ``L`` when the sampled images are all grey,
else ``RGB``; ``@rgb``/``@grey`` force one.

Unreadable images: reading one raises a StitchError naming the file. ``@verify`` decodes every
file at load (slow: the whole dataset, in threads) and leaves unreadable ones out, counted in
``meta["skipped"]``. Options combine: ``imagefolder:~/photos@96,grey,verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stitchcore.plugin import Dataset, DataSplits, StitchError

from ._files import EXTENSIONS, ImageFiles, scan_classes, sniff_mode, verify_files
from ._split import stratified_split

__all__ = [
    "ImageFolder",
    "Options",
    "drop_unreadable",
    "load_folder",
    "parse_variant",
    "split_folders",
]

USAGE = "imagefolder needs a directory: --data imagefolder:PATH[@SIZE,rgb|grey,val|test,verify]"
TEST_NAMES = ("val", "valid", "validation", "test")
SPLIT_NAMES = ("train", *TEST_NAMES)
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Options:
    """What ``@…`` after the path asks for."""

    size: int | None = None
    mode: str | None = None  # None: sniffed
    test_split: str | None = None  # None: val, valid, validation, then test
    verify: bool = False


def parse_variant(variant: str, prefix: str = "imagefolder") -> tuple[Path, Options]:
    """``(path, options)`` from ``PATH[@OPT,OPT...]``; a directory whose name holds ``@`` wins."""
    whole = Path(variant).expanduser()
    path, sep, opts = variant.rpartition("@")
    if not sep or whole.is_dir():
        return whole, Options()
    size = mode = split = None
    verify = False
    for token in (t.strip().lower() for t in opts.split(",")):
        if token.isdigit() and int(token) > 0:
            size = int(token)
        elif token in ("rgb", "grey", "gray", "l"):
            mode = "RGB" if token == "rgb" else "L"
        elif token in ("val", "test"):
            split = token
        elif token == "verify":
            verify = True
        else:
            raise StitchError(
                f"{prefix}: unknown option {token!r} in {variant!r}; options after @: "
                "SIZE (pixels), rgb, grey, val, test, verify"
            )
    return Path(path).expanduser(), Options(size, mode, split, verify)


def split_folders(root: Path, want: str | None = None) -> tuple[Path, Path | None] | None:
    """``(train folder, test folder or None)`` when ``root`` uses split folders, None when it is
    flat. Refuses a mix of split folders and class folders, and a test split without train."""
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise StitchError(f"cannot list {root}: {exc.strerror or exc}") from None
    splits = {p.name.lower(): p for p in subdirs if p.name.lower() in SPLIT_NAMES}
    if not splits:
        if want:
            raise StitchError(f"@{want} needs split folders, but {root} has none")
        return None
    others = [p.name for p in subdirs if p.name.lower() not in SPLIT_NAMES]
    if others:
        raise StitchError(
            f"{root} mixes split folders ({', '.join(sorted(p.name for p in splits.values()))}) "
            f"with other folders ({', '.join(others[:5])}); use PATH/train/CLASS/IMAGE and "
            "PATH/val/CLASS/IMAGE, or PATH/CLASS/IMAGE only"
        )
    if "train" not in splits:
        raise StitchError(
            f"{root} has {', '.join(sorted(splits))}/ but no train/ folder (the classes and "
            "training images come from PATH/train/CLASS/IMAGE)"
        )
    if want:
        names = ("val", "valid", "validation") if want == "val" else ("test",)
        chosen = next((splits[n] for n in names if n in splits), None)
        if chosen is None:
            raise StitchError(f"@{want}: no {want}/ folder in {root}")
        return splits["train"], chosen
    return splits["train"], next((splits[n] for n in TEST_NAMES if n in splits), None)


def _flatten(classes: dict[str, list[str]], index: dict[str, int]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for name, files in classes.items():
        paths += files
        labels += [index[name]] * len(files)
    return paths, labels


def load_folder(root: Path, opts: Options, *, name: str, tag: str = "imagefolder") -> DataSplits:
    """DataSplits of lazy ``ImageFiles`` for an image folder in either layout (module docstring).

    ``tag`` prefixes error messages (``imagenet`` reuses this reader).
    """
    if not root.is_dir():
        raise StitchError(f"{tag}: {root} is not a directory")
    try:
        layout = split_folders(root, opts.test_split)
        if layout is None or layout[1] is None:
            folder = root if layout is None else layout[0]
            pool = scan_classes(folder)
            classes = list(pool)
            paths, labels = _flatten(pool, {c: i for i, c in enumerate(classes)})
            train_idx, test_idx = stratified_split(np.asarray(labels))
            train = ([paths[i] for i in train_idx], [labels[i] for i in train_idx])
            test = ([paths[i] for i in test_idx], [labels[i] for i in test_idx])
            where = "" if layout is None else f"{folder.name}/ "
            meta = {"layout": f"{where}split 80/20 per class (fixed seed)"}
        else:
            train_dir, test_dir = layout
            train_pool = scan_classes(train_dir)
            test_pool = scan_classes(test_dir, allow_empty=True)
            classes = list(train_pool)
            index = {c: i for i, c in enumerate(classes)}
            unknown = [c for c in test_pool if c not in index]
            if unknown:
                raise StitchError(
                    f"{test_dir.name}/ has classes that train/ lacks: {', '.join(unknown[:10])}"
                    + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
                )
            train, test = _flatten(train_pool, index), _flatten(test_pool, index)
            meta = {"layout": f"train/ and {test_dir.name}/ folders", "test_split": test_dir.name}
    except StitchError as exc:
        raise StitchError(f"{tag}: {exc}") from None
    if not train[0] or not test[0]:
        raise StitchError(
            f"{tag}: no images in {root} for both splits (looked for {', '.join(EXTENSIONS)} in "
            "PATH/CLASS/IMAGE; a class with one image has none in the test split)"
        )
    mode = opts.mode or sniff_mode(train[0])
    if opts.verify:
        train, test, meta["skipped"] = drop_unreadable(root, train, test, mode, tag)
    meta.update(source=str(root), mode=mode, size=opts.size)
    return DataSplits(
        name=name,
        train_x=ImageFiles(train[0], mode=mode, size=opts.size),
        train_y=torch.tensor(train[1], dtype=torch.int64),
        test_x=ImageFiles(test[0], mode=mode, size=opts.size),
        test_y=torch.tensor(test[1], dtype=torch.int64),
        num_classes=len(classes),
        classes=classes,
        meta=meta,
    )


def drop_unreadable(root: Path, train, test, mode: str, tag: str = "imagefolder"):
    """Both splits without the files that fail to decode, and the ``skipped`` report."""
    examples, count, kept = [], 0, []
    for paths, labels in (train, test):
        bad = verify_files(paths, mode)
        count += len(bad)
        for i in sorted(bad)[: MAX_EXAMPLES - len(examples)]:
            examples.append(f"{Path(paths[i]).relative_to(root)}: {bad[i]}")
        keep = [i for i in range(len(paths)) if i not in bad]
        kept.append(([paths[i] for i in keep], [labels[i] for i in keep]))
    if not kept[0][0] or not kept[1][0]:
        raise StitchError(f"{tag}: no readable images left in {root} for both splits")
    return kept[0], kept[1], {"count": count, "examples": examples}


class ImageFolder(Dataset):
    name = "imagefolder"
    description = "your images, one folder per class (or train/ + val/), read lazily"
    variants = ("PATH[@SIZE,rgb|grey,val|test,verify]",)

    def load(self, variant: str | None = None) -> DataSplits:
        if not variant:
            raise StitchError(USAGE)
        root, opts = parse_variant(variant)
        return load_folder(root, opts, name=f"imagefolder:{variant}")
