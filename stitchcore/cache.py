"""Activation stores: activations computed once, read many times (every epoch, every cell).

A store holds one tensor per sample index, in memory while it fits a byte budget and in a
memory-mapped file on disk beyond it; optionally in float16 (halving both), cast back to float32
on read. Reading a batch of indices is a gather, so epochs can reshuffle freely.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

DEFAULT_BUDGET = int(os.environ.get("STITCHCORE_CACHE_BYTES", 4 * 2**30))


class ActivationStore:
    """Fixed-size store of ``n`` activations of one per-sample shape.

    Fill it in order with ``append(batch)``; read with ``take(indices)``. When ``n`` samples do
    not fit ``budget`` bytes the store lives in a temporary file under ``spill_dir`` (deleted with
    the store).
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        *,
        fp16: bool = False,
        budget: int = DEFAULT_BUDGET,
        spill_dir: str | Path | None = None,
    ) -> None:
        self.n, self.shape = n, tuple(shape)
        self.dtype = torch.float16 if fp16 else torch.float32
        nbytes = n * int(np.prod(shape)) * (2 if fp16 else 4)
        self.on_disk = nbytes > budget
        self.nbytes = nbytes
        self._filled = 0
        self._file = None
        if self.on_disk:
            self._file = tempfile.NamedTemporaryFile(
                prefix="stitchcore-acts-", suffix=".bin", dir=spill_dir, delete=True
            )
            np_dtype = np.float16 if fp16 else np.float32
            self._mm = np.memmap(self._file.name, dtype=np_dtype, mode="w+", shape=(n, *shape))
            self.data = torch.from_numpy(self._mm)
        else:
            self.data = torch.empty((n, *shape), dtype=self.dtype)

    def append(self, batch: torch.Tensor) -> None:
        k = batch.shape[0]
        if self._filled + k > self.n:
            raise ValueError("activation store overflow")
        self.data[self._filled : self._filled + k] = batch.detach().to(self.dtype)
        self._filled += k

    @property
    def full(self) -> bool:
        return self._filled == self.n

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Activations of the given sample indices, as float32."""
        return self.data[idx].float()

    def __len__(self) -> int:
        return self._filled

    def close(self) -> None:
        if self._file is not None:
            del self.data, self._mm
            self._file.close()
            self._file = None

    def __del__(self) -> None:  # pragma: no cover - best effort cleanup
        try:
            self.close()
        except Exception:
            pass


def take(store: ActivationStore | torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of a store or a plain tensor, as float32."""
    if isinstance(store, ActivationStore):
        return store.take(idx)
    return store[idx].float()
