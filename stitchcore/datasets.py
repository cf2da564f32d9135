"""The dataset contract, shared options (subsets, label noise, coarse labels) and input adaptation.

A dataset plugin returns its raw splits as *inputs* and integer *labels* (a 1-D int64 tensor,
always complete: subsets, class counts and training order need the labels, never the inputs).
The inputs of a split are one of

- a tensor of images, ``uint8`` in [0, 255] or float in [0, 1], ``N×C×H×W`` (the fast path for
  small data: indexed directly, adapted batch by batch);
- a sequence of ``str`` (a text task: each model's own tokenizer turns them into its input);
- a *lazy* source: any object with ``__len__`` and ``__getitem__(i)`` returning one image
  (a ``C×H×W`` uint8/float tensor or a PIL image, any size), e.g. a ``torch.utils.data.Dataset``
  that decodes files on demand. It is read through a DataLoader with workers; each sample is
  resized to the receiving model's input size before batching, so memory is bounded by the
  batch, not the dataset.

The core adapts inputs to each model's input spec (channels, size, normalisation; tokenization
for text), so one dataset feeds any model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from . import plugins
from .errors import StitchError
from .spec import InputSpec


@dataclass
class DataSplits:
    """Deterministic train/test splits of one dataset (optionally one variant of it).

    ``train_x``/``test_x``: the inputs (see the module docstring: an image tensor, a sequence of
    strings, or a lazy per-sample source); ``train_y``/``test_y``: every label, int64.
    ``meta`` may carry ``test_split`` (which on-disk split is used as the test split, said to the
    user) and ``skipped`` (unreadable files left out, with a count).
    """

    name: str
    train_x: Any
    train_y: torch.Tensor
    test_x: Any
    test_y: torch.Tensor
    num_classes: int
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``image`` (a tensor), ``text`` (strings) or ``lazy`` (decoded per sample)."""
        return input_kind(self.train_x)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the inputs (C×H×W); for lazy images, of the first one."""
        if isinstance(self.train_x, torch.Tensor):
            return tuple(self.train_x.shape[1:])
        if self.kind == "text":
            raise StitchError(f"dataset {self.name!r} holds text, not images")
        return tuple(as_image(self.train_x[0]).shape)


def data_notes(splits: DataSplits) -> list[str]:
    """What the user should be told about loaded data: which split tests, what was skipped."""
    notes = []
    if splits.meta.get("test_split"):
        notes.append(f"data: {splits.name} tests on its {splits.meta['test_split']!r} split")
    skipped = splits.meta.get("skipped")
    if skipped and skipped.get("count"):
        examples = "; ".join(skipped.get("examples", [])[:3])
        notes.append(f"data: {skipped['count']} unreadable files left out ({examples})")
    return notes


def input_kind(inputs: Any) -> str:
    """``image`` for a tensor, ``text`` for a sequence of strings, else ``lazy``."""
    if isinstance(inputs, torch.Tensor):
        return "image"
    if isinstance(inputs, (list, tuple)) and (not inputs or isinstance(inputs[0], str)):
        return "text"
    return "lazy"


def as_image(sample: Any) -> torch.Tensor:
    """One lazily read image as a ``C×H×W`` tensor (uint8 or float), from a tensor, a numpy
    array (H×W or H×W×C) or a PIL image."""
    if isinstance(sample, torch.Tensor):
        return sample if sample.dim() == 3 else sample.unsqueeze(0)
    if hasattr(sample, "convert") and hasattr(sample, "mode"):  # PIL, without importing it
        import numpy as np

        mode = sample.mode if sample.mode in ("L", "RGB") else "RGB"
        sample = np.asarray(sample.convert(mode))
    import numpy as np

    arr = np.asarray(sample)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = arr.transpose(2, 0, 1)[:3]
    return torch.from_numpy(np.ascontiguousarray(arr))


def subset(inputs: Any, idx: torch.Tensor) -> Any:
    """Samples ``idx`` of a split's inputs, without reading a lazy source."""
    kind = input_kind(inputs)
    if kind == "image":
        return inputs[idx]
    if kind == "text":
        return [inputs[int(i)] for i in idx]
    return torch.utils.data.Subset(inputs, idx.tolist())


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
    test_size: int | None = None
    label_noise: float = 0.0
    coarse: dict[int, int] | None = None
    seed: int = 0

    def tag(self) -> str:
        parts = []
        if self.train_size:
            parts.append(f"n{self.train_size}")
        if self.test_size:
            parts.append(f"t{self.test_size}")
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
    train_x, train_y = splits.train_x, splits.train_y
    test_x, test_y = splits.test_x, splits.test_y
    num_classes = splits.num_classes
    classes = splits.classes
    if opt.train_size is not None:
        if not 0 < opt.train_size <= len(train_y):
            raise StitchError(f"--train-size must be in 1..{len(train_y)}, got {opt.train_size}")
        idx = torch.randperm(len(train_y), generator=gen)[: opt.train_size].sort().values
        train_x, train_y = subset(train_x, idx), train_y[idx]
    if opt.test_size is not None:
        if not 0 < opt.test_size <= len(test_y):
            raise StitchError(
                f"--test-size must be in 1..{len(test_y)} (the test split's size), "
                f"got {opt.test_size}"
            )
        # a fixed, class-mixed subset: the same for every seed, so seeds compare on one test set
        test_gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(test_y), generator=test_gen)[: opt.test_size].sort().values
        test_x, test_y = subset(test_x, idx), test_y[idx]
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
        test_x=test_x,
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
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
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


__all__ = [
    "DataOptions",
    "DataSplits",
    "Dataset",
    "adapt",
    "apply_options",
    "as_image",
    "batches",
    "data_notes",
    "default_coarse",
    "input_kind",
    "load_data",
    "subset",
]
