"""Where datasets live and where decoded arrays are cached, and whether we may download.

Decoding (gzip IDX, CSV, JPEG folders) is the slow part of loading; the decoded arrays are kept
as an uncompressed ``.npz`` under the user cache dir (``$XDG_CACHE_HOME/stitchcore/datasets``,
default ``~/.cache/stitchcore/datasets``; never the repository) and, within one process, in
memory. Cache keys name the source file's size and mtime, so a changed source is re-decoded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ENV_DATA",
    "ENV_OFFLINE",
    "FORMAT",
    "array_cache_dir",
    "cache_root",
    "cached_arrays",
    "clear_memory",
    "data_roots",
    "download_dir",
    "file_key",
    "offline",
    "tensor",
]

ENV_DATA = "STITCHCORE_DATA"
ENV_OFFLINE = "STITCHCORE_OFFLINE"
FORMAT = "v1"  # bump when the decoded layout changes

_memory: dict[str, dict[str, np.ndarray]] = {}


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/stitchcore`` (``~/.cache/stitchcore`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stitchcore"


def array_cache_dir() -> Path:
    return cache_root() / "datasets"


def download_dir(name: str) -> Path:
    """Where a dataset downloaded by torchvision is kept (a user cache, not the repository)."""
    return cache_root() / "downloads" / name


def data_roots() -> list[Path]:
    """Directories named by ``$STITCHCORE_DATA`` (``os.pathsep``-separated)."""
    value = os.environ.get(ENV_DATA, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def offline() -> bool:
    """True when downloads are off: ``STITCHCORE_OFFLINE=1``/``HF_HUB_OFFLINE=1`` or no network."""
    for var in (ENV_OFFLINE, "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            return True
    return not _reachable("www.cs.toronto.edu")


@functools.lru_cache(maxsize=8)
def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=1.5).close()
        return True
    except OSError:
        return False


def file_key(*paths: Path) -> str:
    """A short digest of the paths, sizes and mtimes of source files (cache invalidation)."""
    h = hashlib.sha1(FORMAT.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    key: str, build: Callable[[], dict[str, np.ndarray]], *, disk: bool = True
) -> dict[str, np.ndarray]:
    """Arrays for ``key``: from memory, else the on-disk cache, else ``build()`` (then stored).

    A cache dir that cannot be written only costs speed, never the load.
    """
    if key in _memory:
        return _memory[key]
    path = array_cache_dir() / f"{key}.npz"
    arrays = None
    if disk and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError):
            arrays = None  # truncated or foreign file: rebuild it
    if arrays is None:
        arrays = build()
        if disk:
            _save(path, arrays)
    _memory[key] = arrays
    return arrays


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def clear_memory() -> None:
    """Forget the in-process copies (tests use it to exercise the disk cache)."""
    _memory.clear()


def tensor(a: np.ndarray) -> torch.Tensor:
    """A fresh tensor (a copy, so callers may modify it without touching the cache)."""
    return torch.from_numpy(np.array(a, copy=True))
