"""Atomic file writes and checked JSON reads: the one writer every result, checkpoint, zoo entry,
plot and dataset cache goes through.

A file is written to a unique temporary name in its own directory (so two writers of the same
file never share a temporary, and the rename stays on one file system) and renamed over the
target only when the write finished: a reader sees the old file or the new one, never half of
one, and a process killed mid-write leaves only a ``.NAME.*.tmp`` behind (removed on the next
write of that directory's files by :func:`sweep_temporaries`). A file that cannot be written
there (no such directory, no permission, a full disk) is an :class:`UnwritableError`: one line
in the CLI, and still an ``OSError`` for Python callers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StitchError

__all__ = [
    "DamagedFileError",
    "UnwritableError",
    "atomic_write",
    "read_json",
    "sweep_temporaries",
    "write_json",
]


class DamagedFileError(ValueError):
    """A file that exists but cannot be read as what it should be (truncated, empty, foreign)."""

    def __init__(self, path: Path, why: str) -> None:
        self.path, self.why = Path(path), why
        super().__init__(f"{path} is damaged ({why})")


class UnwritableError(StitchError, OSError):
    """A file that cannot be written where it was asked for; ``str()`` is one line naming it."""

    def __init__(self, path: str | os.PathLike, exc: OSError) -> None:
        self.path = Path(path)
        super().__init__(exc.errno, f"cannot write {path}: {exc.strerror or exc}")

    def __str__(self) -> str:
        return self.args[1]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a fresh temporary path beside ``path``, then rename it to
    ``path``. On any error the temporary is removed and the error propagates (the target keeps
    its old content); an ``OSError`` as an :class:`UnwritableError` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(path))  # mkstemp makes 0600; keep what a plain open would give
        os.replace(tmp, path)
    except UnwritableError:
        raise
    except OSError as exc:
        raise UnwritableError(path, exc) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def _mode(path: Path) -> int:
    """The target's current mode, else what ``open`` would give a new file (0666 & ~umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | os.PathLike, *, missing_ok: bool = True) -> Any:
    """The JSON in ``path``; None when it does not exist (and ``missing_ok``). A file that exists
    but does not parse raises :class:`DamagedFileError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    if not text.strip():
        raise DamagedFileError(path, "empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}") from exc


def sweep_temporaries(directory: str | os.PathLike, older_than_s: float = 3600.0) -> int:
    """Remove temporaries that killed writers left in ``directory`` (not recursive), only those
    older than ``older_than_s`` so a live writer's file is never taken; returns how many."""
    import time

    now, removed = time.time(), 0
    for tmp in Path(directory).glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    return removed
