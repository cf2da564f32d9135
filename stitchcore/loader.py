"""Reading a split's raw inputs in batches, whatever they are (see datasets.py's contract).

- image tensors: indexed directly (the fast path for small data: no copies, no workers);
- text: lists of strings, handed to each model's own tokenizer by its view (engine.Side);
- lazy sources: read through a ``torch.utils.data.DataLoader`` with workers (and pinned memory on
  a GPU), each sample decoded by its source and resized to the run's common input size before
  batching, so memory is bounded by the batch, never by the dataset.

Batches come in the order given (a permutation for training, ``arange`` for evaluation) and
carry the sample indices, so cached activations and labels line up with them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .datasets import as_image, input_kind
from .errors import StitchError
from .heap import release_free_heap

__all__ = ["RawBatch", "ReadOptions", "raw_batches", "default_workers"]


def default_workers() -> int:
    """DataLoader workers for lazy sources: the cores this process may use, up to 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


@dataclass(frozen=True)
class ReadOptions:
    """How lazy sources are read: workers, and the common (channels, height, width) every sample
    is brought to before batching (the largest input any model of the run takes)."""

    workers: int = 0
    size: tuple[int, int] | None = None
    channels: int | None = None
    pin_memory: bool = False
    #: model-ready samples (a user's Dataset): batched as they are, no decoding or resizing
    ready: bool = False


@dataclass
class RawBatch:
    idx: torch.Tensor  # sample indices into the split
    inputs: Any  # image tensor batch, or a list of strings
    labels: torch.Tensor


def raw_batches(
    inputs: Any,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    options: ReadOptions = ReadOptions(),
    *,
    min_batch: int = 1,
) -> Iterator[RawBatch]:
    """Batches of samples ``order`` of a split, in that order. Batches smaller than
    ``min_batch`` are left out (BatchNorm cannot train on one sample)."""
    chunks = [c for c in order.split(batch_size) if len(c) >= min_batch]
    kind = input_kind(inputs)
    if kind == "image":
        for idx in chunks:
            yield RawBatch(idx, inputs[idx], labels[idx])
        return
    if kind == "text":
        for idx in chunks:
            yield RawBatch(idx, [inputs[int(i)] for i in idx], labels[idx])
        return
    if not chunks:
        return
    if options.workers:  # forked workers would share (and then keep) the free heap's pages
        release_free_heap()
    loader = torch.utils.data.DataLoader(
        _Samples(inputs, options),
        batch_sampler=[c.tolist() for c in chunks],
        num_workers=options.workers,
        pin_memory=options.pin_memory,
        persistent_workers=False,
    )
    try:
        for idx, images in zip(chunks, loader):
            yield RawBatch(idx, images, labels[idx])
    except StitchError as exc:  # raised in a worker: torch wraps it with the worker's traceback
        raise StitchError(_last_line(str(exc))) from None


def _last_line(message: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    prefix = "stitchcore.errors.StitchError: "
    return line[len(prefix) :] if line.startswith(prefix) else line


class _Samples(torch.utils.data.Dataset):
    """A lazy source seen as float images of one common size (decoded in a worker)."""

    def __init__(self, source: Any, options: ReadOptions) -> None:
        self.source, self.options = source, options

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        sample = self.source[i]
        if self.options.ready:
            return sample
        if isinstance(sample, tuple):  # a torchvision-style (image, label) item
            sample = sample[0]
        img = as_image(sample)
        x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        want_c = self.options.channels
        if want_c and x.shape[0] != want_c:
            if x.shape[0] == 1:
                x = x.expand(want_c, -1, -1)
            elif want_c == 1:
                x = x.mean(0, keepdim=True)
            else:
                raise StitchError(f"sample {i} has {x.shape[0]} channels; expected {want_c}")
        size = self.options.size
        if size and tuple(x.shape[1:]) != tuple(size):
            down = x.shape[1] > size[0] or x.shape[2] > size[1]
            x = F.interpolate(
                x[None], size=size, mode="bilinear", align_corners=False, antialias=down
            )[0]
        return x.contiguous()
