"""First-party plugin: the ``torchvision:`` model source, torchvision's tracer policy and hints.

``torchvision:NAME`` is any classification model in ``torchvision.models`` (``resnet18``,
``vgg11``, ``mobilenet_v3_small``, ``vit_b_16`` …):

- ``@pretrained`` (the default): the architecture's DEFAULT ImageNet weights, read from the
  torch hub cache (``$TORCH_HOME/hub/checkpoints``) or downloaded into it when online. Offline
  and not cached is an OfflineError at once, with no retries;
- ``@IMAGENET1K_V1`` etc.: a specific torchvision weights entry, same rules;
- ``@random`` / ``@random-N``: random initialisation with seed 0 / N (controls, listing cuts);
- ``@PATH``: a local state dict (safetensors or ``.pth``) for the ImageNet-shaped model.

Checkpoints are always read with ``weights_only=True``, also when torchvision's own builder
loads them (so its per-architecture fix-ups, e.g. DenseNet's key renaming, still apply).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torchvision
import torchvision.ops
from torch import nn
from torchvision import models as tvm

import stitchcore
from stitchcore.plugin import (
    InputSpec,
    LoadedModel,
    ModelHints,
    ModelSource,
    StitchError,
    TracerPolicy,
    UnknownNameError,
    cached_download,
    load_state_dict_file,
    random_seed,
    seeded,
    weights_only_loads,
)

from .hints import CUT_RULES, hints_for, is_torchvision_model


@lru_cache(maxsize=1)
def classification_models() -> tuple[str, ...]:
    """Names of torchvision's classification architectures (not detection, video …)."""
    return tuple(tvm.list_models(module=tvm))


@lru_cache(maxsize=1)
def ops_leaf_modules() -> tuple[type, ...]:
    """Every nn.Module class exported by torchvision.ops: FX must not trace into them (their
    forwards assert on shapes, or are custom ops), as in torchvision's feature extraction."""
    return tuple(
        obj
        for obj in vars(torchvision.ops).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module)
    )


def _weights_enum(name: str):
    return tvm.get_model_weights(name)


def _build(name: str, weights=None) -> nn.Module:
    with warnings.catch_warnings():
        # GoogLeNet / Inception v3 warn that their default init will change; irrelevant here.
        warnings.simplefilter("ignore", FutureWarning)
        return tvm.get_model(name, weights=weights, progress=False)


class TorchvisionSource(ModelSource):
    name = "torchvision"
    description = "torchvision classification models (@pretrained from the torch hub cache, @random[-SEED], @PATH)"

    def known_names(self) -> list[str]:
        return list(classification_models())

    def load(self, name: str, weights: str | None) -> LoadedModel:
        if name not in classification_models():
            raise UnknownNameError("torchvision model", name, classification_models())
        weights = weights or "pretrained"
        enum = _weights_enum(name)
        entry = None
        seed = random_seed(weights)
        if seed is not None:
            with seeded(seed):
                model = _build(name)
        elif weights in ("pretrained", "DEFAULT") or weights in enum.__members__:
            entry = enum.DEFAULT if weights in ("pretrained", "DEFAULT") else enum[weights]
            cached_download(
                entry.url,
                f"torchvision:{name}@{weights}",
                hint=f"use torchvision:{name}@random or @PATH to a local state dict",
            )
            with weights_only_loads():
                model = _build(name, entry)
        else:
            path = Path(weights).expanduser()
            if not path.exists():
                choices = ", ".join(["random[-SEED]", "pretrained", *enum.__members__])
                raise StitchError(
                    f"torchvision:{name}@{weights}: no such weights file and no such torchvision "
                    f"weights entry (use @PATH to a state dict, or one of: {choices})"
                )
            model = _build(name)
            load_state_dict_file(model, path)
        model.eval()
        size = None
        if entry is not None:
            size = (entry.transforms.keywords or {}).get("crop_size")
        hints = hints_for(model, size) or ModelHints()
        num_classes = len(entry.meta["categories"]) if entry is not None else 1000
        return LoadedModel(
            module=model,
            spec=f"torchvision:{name}@{weights}",
            input=hints.input or InputSpec((3, 224, 224)),
            hints=hints,
            num_classes=num_classes,
            meta={
                "source": "torchvision",
                "architecture": name,
                "weights": weights,
                "weights_entry": str(entry) if entry is not None else None,
                "torchvision": torchvision.__version__,
            },
        )


@stitchcore.hookimpl
def register_model_sources(register):
    register(TorchvisionSource())


@stitchcore.hookimpl
def tracer_policy(model):
    return TracerPolicy(leaf_modules=ops_leaf_modules(), autowrap_modules=(torchvision.ops,))


@stitchcore.hookimpl
def model_hints(model):
    if is_torchvision_model(model):
        return hints_for(model)
    return None


__all__ = ["CUT_RULES", "TorchvisionSource", "hints_for", "ops_leaf_modules", "torch"]
