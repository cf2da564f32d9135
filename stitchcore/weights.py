"""Loading state dicts safely: safetensors, or ``torch.load(weights_only=True)``.

Never unpickles arbitrary code: a checkpoint that needs it is refused with one line naming the
classes it wanted to build (``unsafe_checkpoint_error``; ``refuse_unsafe_pickles`` does the same
around a library's own loader, e.g. transformers' ``from_pretrained``). Warnings torch prints
while failing to read a file are dropped, so that the error is the one line the user sees.
Also home to the one download path model sources share (``cached_download``): a file in the
torch hub cache is used as is; when it is missing and the machine is offline the caller gets an
OfflineError at once instead of a long series of retries.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import OfflineError, StitchError

__all__ = [
    "OFFLINE_ENV",
    "cached_download",
    "hub_checkpoint_path",
    "is_offline",
    "load_state_dict_checked",
    "load_state_dict_file",
    "random_seed",
    "read_checkpoint",
    "read_state_dict",
    "refuse_unsafe_pickles",
    "seeded",
    "unsafe_checkpoint_error",
    "weights_only_loads",
]

# The environment variable that means "do not touch the network" for torch-hub downloads.
# HF_HUB_OFFLINE is deliberately not read here: the hf plugin sets it for the whole process when
# huggingface.co alone is unreachable, which says nothing about other download hosts.
OFFLINE_ENV = ("STITCHCORE_OFFLINE",)


def read_checkpoint(path: str | Path) -> Any:
    """Whatever a checkpoint holds (nested dicts of tensors and plain values), read safely.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A pickle that needs arbitrary code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise StitchError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise StitchError(f"{path.name}: not a readable safetensors file ({exc})") from exc
    with refuse_unsafe_pickles(path.name, path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise  # refuse_unsafe_pickles words it
        except Exception as exc:
            raise StitchError(f"{path.name}: not a readable checkpoint ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# torch names the global it refused in several wordings across versions: "Unsupported global:
# GLOBAL __main__.Foo was not an allowed global", "Trying to load unsupported GLOBAL posix.system
# whose module posix is blocked"
_GLOBAL = re.compile(r"\bGLOBAL ([A-Za-z_][\w.]*)")


def _unsafe_globals(exc: BaseException, path: Path | None) -> list[str]:
    """The globals (classes, functions) a refused checkpoint wanted: torch's own scan of the
    file when it can do one (zip checkpoints, torch ≥ 2.6), else the names in the message."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None and path is not None:
        with contextlib.suppress(Exception):  # legacy (non-zip) files: read the message
            found = list(scan(str(path)))
            if found:
                return found
    messages = [str(exc), str(exc.__cause__ or ""), str(exc.__context__ or "")]
    return list(dict.fromkeys(m for text in messages for m in _GLOBAL.findall(text)))


def unsafe_checkpoint_error(
    exc: BaseException, label: str, path: str | Path | None = None
) -> StitchError | None:
    """A one-line StitchError for torch's refusal of a ``weights_only`` load, or None when
    ``exc`` is not one.

    Recognised by type (``pickle.UnpicklingError``, what ``torch.load`` raises for every
    weights-only refusal), not by torch's wording. A file that wanted classes or functions is
    refused naming them (``label: refusing to unpickle it: the checkpoint needs arbitrary code to
    load (__main__.Foo); …``); one that torch cannot read safely for another reason (a plain
    pickle, a damaged file) says so with torch's own reason.
    """
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    names = _unsafe_globals(exc, Path(path) if path is not None else None)
    if names:
        what = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        return StitchError(
            f"{label}: refusing to unpickle it: the checkpoint needs arbitrary code to load "
            f"({what}); only tensors, dicts and plain values are accepted"
        )
    reason = next(
        (
            line.split("WeightsUnpickler error:")[-1].strip()
            for line in reversed(str(exc).splitlines())
            if line.strip() and "documentation of torch.load" not in line
        ),
        "",
    )
    return StitchError(
        f"{label}: not a checkpoint torch.load(weights_only=True) can read"
        + (f" ({reason})" if reason else "")
        + "; save the weights with torch.save(model.state_dict()) or as safetensors"
    )


@contextlib.contextmanager
def refuse_unsafe_pickles(label: str, path: str | Path | None = None) -> Iterator[None]:
    """Turn a weights-only refusal inside the block (a library loader calling ``torch.load``,
    such as transformers' ``from_pretrained`` on a ``pytorch_model.bin``) into the one-line
    StitchError of ``unsafe_checkpoint_error``, ``label`` naming the checkpoint.

    Warnings raised in the block (torch's "Detected pickle protocol 4 …" before it refuses a
    plain pickle) are held back: dropped when the block fails, so the error is the only line
    the user sees; re-issued when it succeeds.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except pickle.UnpicklingError as exc:
            raise unsafe_checkpoint_error(exc, label, path) from exc
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a torch checkpoint (optionally under a
    ``state_dict`` / ``model`` key)."""
    path = Path(path)
    data = read_checkpoint(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise StitchError(f"{path.name}: expected a state dict, found {type(data).__name__}")
    return data


def load_state_dict_checked(
    model: nn.Module,
    state: Mapping[str, Any],
    label: str,
    *,
    optional: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model`` strictly; mismatches are a StitchError naming the keys.

    ``label`` names the checkpoint in the message. Keys in ``optional`` may be missing from
    ``state`` (the model keeps its own values), e.g. BatchNorm's ``num_batches_tracked``, which
    some published checkpoints leave out and which never changes an eval-mode output.
    """
    own = model.state_dict()
    non_tensor = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = sorted(set(own) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        k
        for k in set(own) & set(state)
        if isinstance(state[k], torch.Tensor) and own[k].shape != state[k].shape
    )
    if missing or unexpected or wrong or non_tensor:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]
                )
            )
        if non_tensor:
            parts.append(f"not tensors {_few(non_tensor)}")
        raise StitchError(f"{label} does not fit {type(model).__name__}: " + "; ".join(parts))
    full = dict(own)
    full.update(state)
    model.load_state_dict(full)


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint strictly; mismatched keys or shapes are a StitchError naming them."""
    load_state_dict_checked(model, read_state_dict(path), Path(path).name)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ----------------------------------------------------------------------------- downloads
def is_offline(host: str | None = None, timeout: float = 1.5) -> bool:
    """True when STITCHCORE_OFFLINE is set, or ``host`` cannot be reached on port 443.

    Probing once up front turns "no network" into an immediate, clear error rather than the
    minutes of retries a download library spends before giving up.
    """
    if any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in OFFLINE_ENV):
        return True
    if host is None:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        return True


def hub_checkpoint_path(url: str, file_name: str | None = None) -> Path:
    """Where torch.hub caches the file behind ``url`` (``$TORCH_HOME/hub/checkpoints/NAME``);
    ``file_name`` replaces the URL's basename (needed when several URLs share one)."""
    name = file_name or os.path.basename(urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def cached_download(url: str, what: str, hint: str = "", file_name: str | None = None) -> Path:
    """The local path of ``url``'s file in the torch hub cache, downloading it if needed.

    ``what`` names the weights in messages (``torchvision:resnet18``); ``hint`` says what to do
    instead when offline (``use @random or @PATH``); ``file_name`` is the name in the cache
    (default: the URL's basename, as torch.hub uses). Offline and not cached → OfflineError.
    A basename carrying a hash prefix (``resnet18-f37072fd.pth``) is checked after download.
    """
    dest = hub_checkpoint_path(url, file_name)
    if dest.is_file():
        return dest
    host = urlparse(url).hostname
    if is_offline(host):
        raise OfflineError(
            f"{what}: weights are not in the local torch hub cache ({dest}) and {host} cannot "
            f"be reached" + (f"; {hint}" if hint else "")
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(dest.name)
    try:
        torch.hub.download_url_to_file(
            url, str(dest), hash_prefix=found.group(1) if found else None, progress=True
        )
    except Exception as exc:
        raise StitchError(f"{what}: could not download {url} ({exc})") from exc
    return dest


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` inside the block to ``weights_only=True``.

    Library loaders (torchvision's ``weights.get_state_dict``) call ``torch.load`` with
    ``weights_only=False``; torch's own TORCH_FORCE_WEIGHTS_ONLY_LOAD switch overrides that, so a
    library's model-building logic can be reused without unpickling arbitrary code.
    """
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {n: os.environ.get(n) for n in names}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with refuse_unsafe_pickles("a checkpoint"):
            yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


# ----------------------------------------------------------------------------- random weights
def random_seed(weights: str | None) -> int | None:
    """The seed a ``@random`` / ``@random-N`` weights spec names (0 for ``@random``), or None
    for any other weights. Sources seed their random init with it so that a spec names the same
    model every time it is loaded (controls must be reproducible)."""
    if weights is None:
        return None
    found = re.fullmatch(r"random(?:-(\d+))?", weights)
    if not found:
        return None
    return int(found.group(1) or 0)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a random initialisation under ``seed`` without disturbing the global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
