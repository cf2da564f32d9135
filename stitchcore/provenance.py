"""Where a result came from: package versions, the stitchcore commit, the command and the time
(recorded in matrix.json, zoo records and saved stitches)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["provenance", "versions"]


def versions() -> dict:
    """Versions of Python and the packages that change numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("stitchcore", "torch", "timm", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def provenance() -> dict:
    """Where a result came from: the command line, the time, and the stitchcore commit when it
    runs from a git checkout (with ``+dirty`` when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    commit = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip() or None  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        if commit and dirty:
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
    }
