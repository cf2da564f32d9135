"""Loading state dicts safely: safetensors, or ``torch.load(weights_only=True)``.

Never unpickles arbitrary code: a checkpoint that needs it is refused with a clear message.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import StitchError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a torch checkpoint (optionally under a
    ``state_dict`` / ``model`` key)."""
    path = Path(path)
    if not path.is_file():
        raise StitchError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise StitchError(
            f"{path.name}: refusing to unpickle it: the checkpoint needs arbitrary code to load "
            "(only tensors, dicts and plain values are accepted)"
        ) from exc
    except Exception as exc:
        raise StitchError(f"{path.name}: not a readable checkpoint ({exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise StitchError(f"{path.name}: expected a state dict, found {type(data).__name__}")
    return data


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint strictly; mismatched keys or shapes are a StitchError naming them."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
            )
        raise StitchError(f"{Path(path).name} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
