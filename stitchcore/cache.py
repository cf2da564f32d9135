"""Activation stores: activations computed once, read many times (every epoch, every cell).

A store holds one tensor per sample index: in device memory (a GPU run whose cache fits), in host
memory while it fits a byte budget, or beyond it in a memory-mapped file under the run's spill
directory (never the system temp dir: a killed run's files are found and removed by the next
run, see :func:`sweep_spill`). Optionally in float16 (halving both), cast back to float32 on read.
Reading a batch of indices is a gather, so epochs can reshuffle freely.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_BUDGET",
    "ActivationStore",
    "disk_read_rate",
    "spill_directory",
    "sweep_spill",
]

DEFAULT_BUDGET = int(os.environ.get("STITCHCORE_CACHE_BYTES", 4 * 2**30))


class ActivationStore:
    """Fixed-size store of ``n`` activations of one per-sample shape.

    Fill it with ``put(indices, batch)`` (or ``append(batch)`` in order); read with
    ``take(indices)``. When ``n`` samples do not fit ``budget`` bytes the store is a file under
    ``spill_dir`` (deleted with the store).
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        *,
        fp16: bool = False,
        budget: int = DEFAULT_BUDGET,
        spill_dir: str | Path | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.n, self.shape = n, tuple(shape)
        self.dtype = torch.float16 if fp16 else torch.float32
        nbytes = n * int(np.prod(shape)) * (2 if fp16 else 4)
        self.on_disk = nbytes > budget
        self.nbytes = nbytes
        self._filled = 0
        self._file = None
        if self.on_disk:
            directory = Path(spill_dir) if spill_dir else None
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(
                prefix="acts-", suffix=".bin", dir=directory, delete=True
            )
            np_dtype = np.float16 if fp16 else np.float32
            self._mm = np.memmap(self._file.name, dtype=np_dtype, mode="w+", shape=(n, *shape))
            self.data = torch.from_numpy(self._mm)
        else:
            self.data = torch.empty((n, *shape), dtype=self.dtype, device=device)

    def put(self, idx: torch.Tensor, batch: torch.Tensor) -> None:
        """Store ``batch`` at sample indices ``idx``."""
        batch = batch.detach().to(self.dtype)
        if self.data.device != batch.device:
            batch = batch.to(self.data.device)
        if self.on_disk:
            self.data[idx.numpy()] = batch.cpu()
        else:
            self.data[idx.to(self.data.device)] = batch
        self._filled += len(idx)

    def append(self, batch: torch.Tensor) -> None:
        k = batch.shape[0]
        if self._filled + k > self.n:
            raise ValueError("activation store overflow")
        self.put(torch.arange(self._filled, self._filled + k), batch)

    @property
    def full(self) -> bool:
        return self._filled == self.n

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Activations of the given sample indices, as float32 (on the store's device)."""
        if self.on_disk:
            return torch.from_numpy(self._mm[idx.numpy()]).float()
        return self.data[idx.to(self.data.device)].float()

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


def disk_read_rate(directory: str | Path, *, size: int = 64 * 2**20, chunk: int = 2**18) -> float:
    """Bytes per second read back, in shuffled ``chunk``-byte pieces (an epoch's gathers), from
    a ``size``-byte file written and synced under ``directory``.

    The file's pages are dropped from the page cache first where the OS allows it (Linux's
    ``posix_fadvise``), so the disk is measured rather than memory; elsewhere the figure can be
    the page cache's. The file is removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pieces = max(1, size // chunk)
    block = os.urandom(chunk)
    with tempfile.NamedTemporaryFile(prefix="probe-", suffix=".bin", dir=directory) as f:
        for _ in range(pieces):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        order = np.random.default_rng(0).permutation(pieces)
        t0 = time.perf_counter()
        for k in order:
            os.pread(f.fileno(), chunk, int(k) * chunk)
        return pieces * chunk / max(time.perf_counter() - t0, 1e-9)


def spill_directory(results_dir: str | Path) -> Path:
    """This process's spill directory under a results directory (``.spill/PID``)."""
    return Path(results_dir) / ".spill" / str(os.getpid())


def sweep_spill(results_dir: str | Path) -> int:
    """Remove the spill directories of processes that no longer run (a SIGKILL leaves them);
    returns how many."""
    root = Path(results_dir) / ".spill"
    removed = 0
    if not root.is_dir():
        return 0
    for d in root.iterdir():
        if not d.name.isdigit() or _alive(int(d.name)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
