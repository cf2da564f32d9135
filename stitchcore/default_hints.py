"""Built-in plugin: default cuts for plain nn.Modules that no other plugin recognises.

A block/stage container is a top-level child that is a Sequential/ModuleList named like
``blocks``, ``stages``, ``layers`` or ``features``, or a run of top-level children named
``layer1``, ``layer2`` … (torchvision ResNets). The default cuts are the stem (the last top-level
child before the first block) followed by each block. In a hand-written model that adds each
block's residual in its own loop, a block's name resolves to the end of that loop iteration
(iteration.py), so the same names serve.

A container of single layers (VGG's ``features``: conv, relu, conv, relu, pool …) has no
blocks; its boundaries are taken after each downsampling layer (pooling, strided conv), which is
where a VGG "stage" ends.
"""

from __future__ import annotations

import re

from torch import nn

from .hookspecs import hookimpl
from .spec import ModelHints

__all__ = ["NUMBERED", "block_cuts", "default_cuts", "model_hints"]

_CONTAINER_NAMES = ("blocks", "stages", "layers", "layer", "encoder", "features", "trunk")
NUMBERED = re.compile(r"(layer|stage|block|level|s)\d+")


def block_cuts(model: nn.Module) -> list[str]:
    """Module paths of the model's blocks/stages in definition order (no stem), or []."""
    children = list(model.named_children())
    numbered = [n for n, _ in children if NUMBERED.fullmatch(n)]
    if len(numbered) >= 2:
        return numbered
    for name, child in children:
        if name in _CONTAINER_NAMES and isinstance(child, (nn.Sequential, nn.ModuleList)):
            subs = list(child.named_children())
            if subs and all(not list(m.children()) for _, m in subs):
                return [f"{name}.{sub}" for sub, m in subs if _downsamples(m)]
            return [f"{name}.{sub}" for sub, _ in subs]
    return []


def _downsamples(layer: nn.Module) -> bool:
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d)):
        return True
    stride = getattr(layer, "stride", 1)
    return (
        isinstance(layer, nn.Conv2d) and max(stride if isinstance(stride, tuple) else (stride,)) > 1
    )


def default_cuts(model: nn.Module) -> list[str]:
    """The stem (the last top-level child before the first block) followed by each block."""
    blocks = block_cuts(model)
    if not blocks:
        return []
    names = [n for n, _ in model.named_children()]
    first = blocks[0].split(".")[0]
    before = names[: names.index(first)]
    stem = [before[-1]] if before else []
    return stem + blocks


@hookimpl(trylast=True)
def model_hints(model: nn.Module) -> ModelHints | None:
    cuts = default_cuts(model)
    return ModelHints(cuts=cuts) if cuts else None
