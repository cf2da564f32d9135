"""Built-in plugin: default cuts for plain nn.Modules that no other plugin recognises.

A block/stage container is a top-level child that is a Sequential/ModuleList named like
``blocks``, ``stages``, ``layers`` or ``features``, or a run of top-level children named
``layer1``, ``layer2`` … (torchvision ResNets). The default cuts are the stem (the last top-level
child before the first block) followed by each block.
"""

from __future__ import annotations

import re

from torch import nn

from .hookspecs import hookimpl
from .spec import ModelHints

_CONTAINER_NAMES = ("blocks", "stages", "layers", "layer", "encoder", "features", "trunk")


def default_cuts(model: nn.Module) -> list[str]:
    children = list(model.named_children())
    numbered = [n for n, _ in children if re.fullmatch(r"(layer|stage|block)\d+", n)]
    if len(numbered) >= 2:
        blocks = numbered
    else:
        blocks = []
        for name, child in children:
            if name in _CONTAINER_NAMES and isinstance(child, (nn.Sequential, nn.ModuleList)):
                blocks = [f"{name}.{sub}" for sub, _ in child.named_children()]
                break
    if not blocks:
        return []
    first = blocks[0].split(".")[0]
    names = [n for n, _ in children]
    before = names[: names.index(first)]
    stem = [before[-1]] if before else []
    return stem + blocks


@hookimpl(trylast=True)
def model_hints(model: nn.Module) -> ModelHints | None:
    cuts = default_cuts(model)
    return ModelHints(cuts=cuts) if cuts else None
