"""VISSL (and torchvision-layout) ResNet-50 checkpoints → a torchvision ResNet-50 trunk.

VISSL's ResNe(X)t trunk is a ModuleDict ``_feature_blocks`` of torchvision's own pieces (conv1,
bn1, conv1_relu, maxpool, layer1..4, avgpool, flatten), so its weights are torchvision's with a
``_feature_blocks.`` prefix and no ``fc``. The layouts read here:

1. a VISSL training checkpoint: ``ckpt["classy_state_dict"]["base_model"]["model"]["trunk"]``
   (the projection/prototype heads next to it are ignored);
2. ``{"model_state_dict": {...}}`` (VISSL's exported form);
3. a flat state dict: VISSL keys, or torchvision keys (Barlow Twins, VICReg, a supervised
   ``resnet50`` whose ``fc`` is dropped).

After stripping ``module.`` (DistributedDataParallel), ``trunk.`` and ``_feature_blocks.``
prefixes and dropping head keys, the key set must be exactly ResNet-50's minus ``fc``: anything
else is named in the error, never silently skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torchvision.models import resnet50

from stitchcore.plugin import StitchError, load_state_dict_checked

__all__ = ["find_trunk", "load_trunk", "resnet50_trunk", "torchvision_keys"]

_PREFIXES = ("module.", "trunk.", "_feature_blocks.")
# Heads that sit next to the trunk in published checkpoints: a classifier (torchvision fc,
# VISSL's clf) and self-supervised projection heads / SwAV prototypes.
_HEAD_PARTS = ("fc.", "heads.", "projection", "prototypes")


def find_trunk(ckpt: Any, label: str) -> tuple[Mapping[str, Any], str]:
    """The trunk's state dict inside a checkpoint and the name of the layout it was found in."""
    if not isinstance(ckpt, Mapping):
        raise StitchError(f"{label}: expected a checkpoint dict, found {type(ckpt).__name__}")
    if "classy_state_dict" in ckpt:
        try:
            trunk = ckpt["classy_state_dict"]["base_model"]["model"]["trunk"]
        except (KeyError, TypeError) as exc:
            raise StitchError(
                f"{label}: has 'classy_state_dict' but no base_model.model.trunk inside it "
                f"(missing {exc}); not a VISSL model checkpoint"
            ) from exc
        layout = "vissl"
    elif isinstance(ckpt.get("model_state_dict"), Mapping):
        trunk, layout = ckpt["model_state_dict"], "vissl-model_state_dict"
    elif isinstance(ckpt.get("state_dict"), Mapping):
        trunk, layout = ckpt["state_dict"], "state_dict"
    else:
        trunk, layout = ckpt, "flat"
    if not isinstance(trunk, Mapping):
        raise StitchError(f"{label}: the trunk is a {type(trunk).__name__}, not a state dict")
    return trunk, layout


def torchvision_keys(trunk: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename VISSL/DDP keys to torchvision's; returns (state, dropped head keys)."""
    state: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in trunk.items():
        new = str(key)
        for prefix in _PREFIXES:
            new = new.removeprefix(prefix)
        if any(new.startswith(p) if p.endswith(".") else p in new for p in _HEAD_PARTS):
            dropped.append(str(key))
            continue
        if new in state:
            raise StitchError(f"two checkpoint keys map to {new!r} (e.g. {key!r})")
        state[new] = value
    return state, dropped


def resnet50_trunk() -> nn.Module:
    """torchvision's ResNet-50 without its classifier: outputs the 2048-d pooled features."""
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def load_trunk(ckpt: Any, label: str) -> tuple[nn.Module, dict[str, Any]]:
    """A ResNet-50 trunk with the checkpoint's weights, plus facts for LoadedModel.meta."""
    trunk, layout = find_trunk(ckpt, label)
    state, dropped = torchvision_keys(trunk)
    model = resnet50_trunk()
    optional = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    load_state_dict_checked(
        model,
        state,
        f"{label} (read as a VISSL/torchvision ResNet-50 trunk, layout {layout!r})",
        optional=optional,
    )
    model.eval()
    return model, {"layout": layout, "dropped_keys": len(dropped), "tensors": len(state)}
