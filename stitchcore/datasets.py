"""The dataset contract, shared options (subsets, label noise, coarse labels) and input adaptation.

A dataset plugin returns its raw splits as image tensors (``uint8`` in [0, 255] or float in
[0, 1], ``N×C×H×W``) and integer labels; the core adapts them to each model's input spec
(channels, size, normalisation) batch by batch, so one dataset feeds any model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from . import plugins
from .errors import StitchError
from .spec import InputSpec


@dataclass
class DataSplits:
    """Deterministic train/test splits of one dataset (optionally one variant of it)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


class Dataset:
    """Base class for dataset plugins: set ``name``/``description``, implement ``load``.

    ``unavailable()`` returns None when the data can be loaded here, else a one-line reason that
    says how to get it; it speaks for the default (no-variant) case, since a variant may point
    elsewhere. ``load(variant)`` returns DataSplits; ``variant`` is the part after ``NAME:`` in
    ``--data NAME:VARIANT`` (e.g. ``colour-mnist:digit``, ``imagefolder:PATH``); it raises
    StitchError when it cannot load.
    """

    name: str = ""
    description: str = ""
    variants: tuple[str, ...] = ()
    # Default superclass map (class index -> superclass index) for ``--coarse`` (Bansal et al.
    # train "weak" models on coarse labels), with superclass names; None where none is natural.
    coarse: dict[int, int] | None = None
    coarse_classes: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        return None

    def load(self, variant: str | None = None) -> DataSplits:
        raise NotImplementedError


@dataclass(frozen=True)
class DataOptions:
    """Options shared by all datasets (Bansal et al.'s data experiments)."""

    train_size: int | None = None
    label_noise: float = 0.0
    coarse: dict[int, int] | None = None
    seed: int = 0

    def tag(self) -> str:
        parts = []
        if self.train_size:
            parts.append(f"n{self.train_size}")
        if self.label_noise:
            parts.append(f"noise{self.label_noise:g}")
        if self.coarse:
            parts.append("coarse")
        return "-".join(parts)


def load_data(spec: str, options: DataOptions | None = None) -> DataSplits:
    """Load ``NAME[:VARIANT]`` and apply the shared options."""
    name, _, variant = spec.partition(":")
    dataset = plugins.get_dataset(name)
    # unavailable() speaks for the default location; a variant may name another (cifar10:PATH),
    # so with a variant load() itself decides and raises StitchError if it cannot.
    reason = None if variant else dataset.unavailable()
    if reason:
        raise StitchError(f"dataset {name!r} is not available here: {reason}")
    splits = dataset.load(variant or None)
    return apply_options(splits, options or DataOptions())


def apply_options(splits: DataSplits, opt: DataOptions) -> DataSplits:
    """Subset the training set, coarsen labels, corrupt training labels; test set stays clean
    except for coarsening (the task changes, the data does not)."""
    gen = torch.Generator().manual_seed(opt.seed)
    train_x, train_y, test_y = splits.train_x, splits.train_y, splits.test_y
    num_classes = splits.num_classes
    classes = splits.classes
    if opt.train_size is not None:
        if not 0 < opt.train_size <= len(train_y):
            raise StitchError(f"--train-size must be in 1..{len(train_y)}, got {opt.train_size}")
        idx = torch.randperm(len(train_y), generator=gen)[: opt.train_size].sort().values
        train_x, train_y = train_x[idx], train_y[idx]
    if opt.coarse:
        missing = set(range(num_classes)) - set(opt.coarse)
        if missing:
            raise StitchError(f"coarse label map lacks classes {sorted(missing)}")
        table = torch.tensor([opt.coarse[c] for c in range(num_classes)])
        train_y, test_y = table[train_y], table[test_y]
        classes = _coarse_names(splits, opt.coarse, int(table.max()) + 1)
        num_classes = int(table.max()) + 1
    if opt.label_noise:
        if not 0 <= opt.label_noise <= 1:
            raise StitchError(f"label noise must be in [0, 1], got {opt.label_noise}")
        flip = torch.rand(len(train_y), generator=gen) < opt.label_noise
        random_labels = torch.randint(0, num_classes, (len(train_y),), generator=gen)
        train_y = torch.where(flip, random_labels, train_y)
    meta = {**splits.meta, "options": opt.tag()}
    return replace(
        splits,
        train_x=train_x,
        train_y=train_y,
        test_y=test_y,
        num_classes=num_classes,
        classes=classes,
        meta=meta,
    )


def _coarse_names(splits: DataSplits, coarse: dict[int, int], n: int) -> list[str]:
    """Superclass names: the dataset's own (``meta["coarse_classes"]``) when the map is its
    default one, else the fine class names of each superclass joined with ``+``."""
    own = splits.meta.get("coarse_classes")
    if own and splits.meta.get("coarse") == coarse and len(own) == n:
        return list(own)
    if len(splits.classes) != splits.num_classes:
        return [str(k) for k in range(n)]
    return ["+".join(c for i, c in enumerate(splits.classes) if coarse[i] == k) for k in range(n)]


def default_coarse(spec: str) -> dict[int, int]:
    """The superclass map that dataset ``NAME[:VARIANT]`` ships, for a bare ``--coarse``."""
    name = spec.partition(":")[0]
    dataset = plugins.get_dataset(name)
    if not dataset.coarse:
        having = sorted(n for n, d in plugins.datasets().items() if getattr(d, "coarse", None))
        raise StitchError(
            f"dataset {name!r} has no default coarse label map; datasets with one: "
            + (", ".join(having) or "none")
        )
    return dict(dataset.coarse)


def adapt(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Turn a batch of dataset images into what a model with this input spec expects."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    want_c, want_h, want_w = spec.shape
    if x.shape[1] != want_c:
        if x.shape[1] == 1:
            x = x.expand(-1, want_c, -1, -1)
        elif want_c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise StitchError(f"cannot adapt {x.shape[1]}-channel images to {want_c} channels")
    if tuple(x.shape[2:]) != (want_h, want_w):
        x = F.interpolate(x, size=(want_h, want_w), mode="bilinear", align_corners=False)
    if spec.mean is not None and spec.std is not None:
        mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic mini-batches of (images, labels)."""
    n = len(y)
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if shuffle
        else torch.arange(n)
    )
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
