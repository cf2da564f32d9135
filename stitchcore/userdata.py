"""A user's own models and data, as the engine takes them, and how results describe them.

Data can be a dataset name (a plugin), :class:`~stitchcore.datasets.DataSplits`, or a pair
``(train, test)`` of any of: a tuple of tensors ``(inputs, labels)``; a map-style
``torch.utils.data.Dataset`` of ``(input, label)`` items (read lazily through a DataLoader; its
labels are read once up front, from ``.targets`` when it has them); a ``DataLoader`` or any
iterable of ``(inputs, labels)`` batches (read once into memory). Such inputs are *model-ready*:
both models get them as they are (no adaptation), so they must suit both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .datasets import DataSplits
from .errors import StitchError

__all__ = ["as_splits", "describe_data", "describe_model"]


def describe_model(model: Any) -> Any:
    """A spec string as it is; for a loaded model its spec; for a user's module its class,
    parameter count and a hash of its state (so results say which weights they came from)."""
    if isinstance(model, str):
        return model
    spec = getattr(model, "spec", None)
    if isinstance(spec, str):
        return spec
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise StitchError(
            f"a model must be a spec string or an nn.Module, not {type(model).__name__}"
        )
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "parameters": sum(p.numel() for p in module.parameters()),
        "state_sha256": h.hexdigest()[:16],
    }


def describe_data(data: Any, splits: DataSplits | None = None) -> Any:
    """A dataset name as it is; for other data, its sizes and a hash of its labels."""
    if isinstance(data, str):
        return data
    if splits is None:
        return {"source": type(data).__name__}
    h = hashlib.sha256()
    for y in (splits.train_y, splits.test_y):
        h.update(y.to(torch.int64).numpy().tobytes())
    return {
        "name": splits.name,
        "train": len(splits.train_y),
        "test": len(splits.test_y),
        "num_classes": splits.num_classes,
        "labels_sha256": h.hexdigest()[:16],
    }


def as_splits(data: Any, num_classes: int | None = None) -> tuple[DataSplits, bool]:
    """(DataSplits, ready): the user's data as splits; ``ready`` when its inputs are
    model-ready (not dataset images or text for the engine to adapt)."""
    if isinstance(data, DataSplits):
        return data, False
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise StitchError(
            "data must be a dataset name, DataSplits, or (train, test) — each a tuple of "
            "tensors (inputs, labels), a Dataset of (input, label) items, a DataLoader or an "
            "iterable of (inputs, labels) batches"
        )
    train_x, train_y = _split(data[0], "train")
    test_x, test_y = _split(data[1], "test")
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    splits = DataSplits("user data", train_x, train_y, test_x, test_y, classes)
    return splits, True


def _split(source: Any, name: str) -> tuple[Any, torch.Tensor]:
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and all(isinstance(t, torch.Tensor) for t in source)
    ):
        x, y = source
        return x, _labels(y, name)
    if _map_style(source):
        targets = getattr(source, "targets", None)
        if targets is None:
            targets = [_item(source[i], name)[1] for i in range(len(source))]
        return _Inputs(source), _labels(torch.as_tensor(targets), name)
    if isinstance(source, Iterable):
        xs, ys = [], []
        for batch in source:
            x, y = _item(batch, name)
            xs.append(x)
            ys.append(torch.as_tensor(y))
        if not ys:
            raise StitchError(f"the {name} data is empty")
        if not all(isinstance(x, torch.Tensor) for x in xs):
            raise StitchError(
                f"the {name} batches' inputs must be tensors (for several inputs, give a "
                "map-style Dataset)"
            )
        return torch.cat(xs), _labels(torch.cat(ys), name)
    raise StitchError(f"cannot read the {name} data from a {type(source).__name__}")


def _map_style(source: Any) -> bool:
    return (
        isinstance(source, torch.utils.data.Dataset)
        and not isinstance(source, torch.utils.data.IterableDataset)
        and hasattr(source, "__len__")
    )


def _item(item: Any, name: str) -> tuple[Any, Any]:
    if isinstance(item, dict) and {"inputs", "labels"} <= set(item):
        return item["inputs"], item["labels"]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise StitchError(
        f"the {name} data yields {type(item).__name__}; expected (inputs, labels) pairs"
    )


def _labels(y: torch.Tensor, name: str) -> torch.Tensor:
    if y.dtype.is_floating_point or y.dim() != 1:
        raise StitchError(
            f"the {name} labels must be a 1-D tensor of class indices, got "
            f"{tuple(y.shape)} {y.dtype}"
        )
    return y.to(torch.int64)


class _Inputs(torch.utils.data.Dataset):
    """A Dataset of (input, label) items seen as its inputs only (labels are kept apart)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return _item(self.dataset[i], "data")[0]
