"""First-party plugin: the ``timm:`` model source and timm's tracer policy.

Written exactly as a third-party plugin would be: it only uses stitchcore's public contracts
and is found through the ``stitchcore`` entry-point group.

``timm:NAME`` / ``timm:NAME@pretrained`` loads timm's pretrained weights (from the local cache
when offline), ``timm:NAME@random`` a randomly initialised model, ``timm:NAME@PATH`` weights from a
local safetensors or ``.pth`` state dict.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import timm.layers._fx as timm_fx
import torch
from torch import nn

import stitchcore
from stitchcore.plugin import (
    InputSpec,
    LoadedModel,
    ModelHints,
    ModelSource,
    OfflineError,
    StitchError,
    TracerPolicy,
    UnknownNameError,
    load_state_dict_file,
    random_seed,
)


def input_spec(model: nn.Module) -> InputSpec | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if not size:
        return None
    return InputSpec(
        shape=tuple(size),
        mean=tuple(cfg["mean"]) if cfg.get("mean") else None,
        std=tuple(cfg["std"]) if cfg.get("std") else None,
    )


def hints_for(model: nn.Module) -> ModelHints | None:
    """Default cuts from timm's feature_info (stem and stages), and layouts."""
    info = getattr(model, "feature_info", None)
    if info is None and getattr(model, "pretrained_cfg", None) is None:
        return None
    cuts = []
    for entry in info or []:
        module = entry.get("module") if isinstance(entry, dict) else None
        if module:
            cuts.append(module)
    fmt = str(getattr(model, "output_fmt", "NCHW")).lower()
    return ModelHints(
        cuts=cuts or None,
        input=input_spec(model),
        spatial_layout="nhwc" if fmt == "nhwc" else "nchw",
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or not _network_reachable()


def _network_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=1.5).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Cache-only Hugging Face downloads while ``offline``: no minutes of retries.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into ``constants.HF_HUB_OFFLINE``, so
    the environment variable alone does not reach an already imported hub; both are set.
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    prev_env, prev_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = prev_const
        if prev_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = prev_env


def random_init(name: str, weights: str, **kwargs) -> nn.Module:
    """``@random`` (seed 0) and ``@random-N`` give reproducible random initialisations, so a
    spec names the same model every time it is loaded."""
    seed = int(weights[7:]) if weights.startswith("random-") else 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs)


class TimmSource(ModelSource):
    name = "timm"
    description = "timm models (@pretrained from the cache or hub, @random[-SEED], @PATH)"

    def known_names(self) -> list[str]:
        return timm.list_models()

    def load(self, name: str, weights: str | None, **kwargs) -> LoadedModel:
        """``kwargs`` go to ``timm.create_model`` (``load_variant`` passes them)."""
        if name not in timm.list_models():
            raise UnknownNameError("timm model", name, timm.list_models())
        weights = weights or "pretrained"
        if weights == "pretrained":
            model = self._pretrained(name, **kwargs)
        elif random_seed(weights) is not None:
            model = random_init(name, weights, **kwargs)
        else:
            path = Path(weights).expanduser()
            if not path.exists():
                raise StitchError(
                    f"timm:{name}@{weights}: no such weights file (use @random, "
                    "@pretrained or @PATH to a state dict)"
                )
            model = timm.create_model(name, pretrained=False, **kwargs)
            load_state_dict_file(model, path)
        model.eval()
        hints = hints_for(model) or ModelHints()
        return LoadedModel(
            module=model,
            spec=f"timm:{name}@{weights}",
            input=hints.input or InputSpec((3, 224, 224)),
            hints=hints,
            num_classes=getattr(model, "num_classes", None),
            meta={"source": "timm", "architecture": name, "weights": weights},
        )

    def load_variant(
        self, name: str, weights: str | None, *, width: float = 1.0, input_size: int | None = None
    ) -> LoadedModel:
        """``load`` with the architecture changed for ``stitch train`` (see docs/zoo.md).

        ``input_size`` becomes ``img_size`` for models built for one input size (ViTs; timm
        resamples pretrained position embeddings); ``width`` scales channel counts of ResNet,
        ConvNeXt and VisionTransformer models and is refused for other architectures.
        """
        if name not in timm.list_models():
            raise UnknownNameError("timm model", name, timm.list_models())
        probe = timm.create_model(name, pretrained=False)
        kwargs = {}
        if input_size and "img_size" in inspect.signature(type(probe).__init__).parameters:
            kwargs["img_size"] = input_size
        if width != 1:
            if random_seed(weights) is None:
                raise StitchError(
                    f"timm:{name}: --width changes the architecture, so @{weights} weights "
                    "cannot fit it; use @random"
                )
            kwargs.update(width_kwargs(name, probe, width))
        return self.load(name, weights, **kwargs)

    def _pretrained(self, name: str, **kwargs) -> nn.Module:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise StitchError(f"timm:{name} has no pretrained weights; use timm:{name}@random")
        offline = _offline()
        try:
            with hub_offline(offline):
                return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            if offline:
                raise OfflineError(
                    f"timm:{name}: pretrained weights are not in the local cache and the hub "
                    f"cannot be reached; use timm:{name}@random, @PATH, or train one with "
                    f"`stitch train timm:{name}`"
                ) from exc
            raise StitchError(f"timm:{name}: could not load pretrained weights: {exc}") from exc


def width_kwargs(name: str, model: nn.Module, width: float) -> dict:
    """``create_model`` kwargs that scale every channel count of ``model`` by ``width``."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    def scale(c: int) -> int:
        return max(1, round(c * width))

    if isinstance(model, ResNet):
        expansion = type(model.layer1[0]).expansion
        stem = model.conv1[0] if isinstance(model.conv1, nn.Sequential) else model.conv1
        return {
            "channels": tuple(scale(f["num_chs"] // expansion) for f in model.feature_info[1:]),
            "stem_width": scale(stem.out_channels),
        }
    if isinstance(model, ConvNeXt):
        return {"dims": tuple(scale(f["num_chs"]) for f in model.feature_info)}
    if isinstance(model, VisionTransformer):
        heads = model.blocks[0].attn.num_heads
        return {"embed_dim": max(1, round(model.embed_dim * width / heads)) * heads}
    raise StitchError(
        f"timm:{name} ({type(model).__name__}): --width is supported for ResNet, ConvNeXt and "
        "VisionTransformer models only"
    )


@stitchcore.hookimpl
def register_model_sources(register):
    register(TimmSource())


@stitchcore.hookimpl
def tracer_policy(model):
    return TracerPolicy(
        leaf_modules=tuple(timm_fx.get_notrace_modules()),
        autowrap_functions=tuple(timm_fx.get_notrace_functions()),
    )


@stitchcore.hookimpl
def model_hints(model):
    if type(model).__module__.startswith("timm."):
        return hints_for(model)
    return None


__all__ = ["TimmSource", "hints_for", "input_spec", "width_kwargs"]
