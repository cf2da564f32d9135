"""First-party plugin: the ``timm:`` model source and timm's tracer policy.

Written exactly as a third-party plugin would be: it only uses stitchcore's public contracts
and is found through the ``stitchcore`` entry-point group.

``timm:NAME`` / ``timm:NAME@pretrained`` loads timm's pretrained weights (from the local cache
when offline), ``timm:NAME@random`` a randomly initialised model, ``timm:NAME@PATH`` weights from a
local safetensors or ``.pth`` state dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import timm.layers._fx as timm_fx
from torch import nn

import stitchcore
from stitchcore import InputSpec, LoadedModel, ModelHints, ModelSource, TracerPolicy
from stitchcore.errors import OfflineError, StitchError, UnknownNameError
from stitchcore.weights import load_state_dict_file


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


class TimmSource(ModelSource):
    name = "timm"
    description = "timm models (@pretrained from the local cache or the hub, @random, @PATH)"

    def known_names(self) -> list[str]:
        return timm.list_models()

    def load(self, name: str, weights: str | None) -> LoadedModel:
        if name not in timm.list_models():
            raise UnknownNameError("timm model", name, timm.list_models())
        weights = weights or "pretrained"
        if weights == "pretrained":
            model = self._pretrained(name)
        else:
            model = timm.create_model(name, pretrained=False)
            if weights != "random":
                path = Path(weights).expanduser()
                if not path.exists():
                    raise StitchError(
                        f"timm:{name}@{weights}: no such weights file (use @random, "
                        "@pretrained or @PATH to a state dict)"
                    )
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

    def _pretrained(self, name: str) -> nn.Module:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise StitchError(f"timm:{name} has no pretrained weights; use timm:{name}@random")
        prev = os.environ.get("HF_HUB_OFFLINE")
        if _offline():
            os.environ["HF_HUB_OFFLINE"] = "1"  # cache only: no slow retries
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as exc:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise OfflineError(
                    f"timm:{name}: pretrained weights are not in the local cache and the hub "
                    f"cannot be reached; use timm:{name}@random, @PATH, or train one with "
                    f"`stitch train timm:{name}`"
                ) from exc
            raise StitchError(f"timm:{name}: could not load pretrained weights: {exc}") from exc
        finally:
            if prev is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = prev


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


__all__ = ["TimmSource", "hints_for", "input_spec"]
