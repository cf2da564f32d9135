"""First-party plugin: the ``vissl:`` model source (self-supervised ResNet-50 trunks).

``vissl:NAME`` loads a published self-supervised ResNet-50 (SimCLR, MoCo v2, SwAV, PIRL, jigsaw,
RotNet from VISSL's model zoo; Barlow Twins and VICReg from their authors' releases) as a
torchvision ResNet-50 *trunk*: ``fc`` is ``Identity``, the output is the 2048-d pooled feature,
there is no classifier (``num_classes`` is None).

- ``vissl:NAME`` / ``vissl:NAME@pretrained``: the published checkpoint, from the torch hub cache
  (downloaded into it when online; offline and not cached is an OfflineError at once);
- ``vissl:NAME@PATH``: the same method's checkpoint from a local file;
- ``vissl:PATH``: any local VISSL- or torchvision-layout ResNet-50 checkpoint;
- ``vissl:NAME@random`` / ``@random-N``: a randomly initialised trunk, seed 0 / N (a control).

Checkpoints are read with ``weights_only=True`` and converted with a strict key check
(see ``convert.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

import stitchcore
from stitchcore.plugin import (
    InputSpec,
    LoadedModel,
    ModelHints,
    ModelSource,
    StitchError,
    UnknownNameError,
    cached_download,
    random_seed,
    read_checkpoint,
    seeded,
)

from .convert import load_trunk, resnet50_trunk

_ZOO = "https://dl.fbaipublicfiles.com/vissl/model_zoo/"


@dataclass(frozen=True)
class Checkpoint:
    """A published ResNet-50 checkpoint: where it lives and what it is."""

    url: str
    method: str


CHECKPOINTS: dict[str, Checkpoint] = {
    "simclr-rn50": Checkpoint(
        _ZOO + "simclr_rn50_800ep_simclr_8node_resnet_16_07_20.7e8feed1/"
        "model_final_checkpoint_phase799.torch",
        "SimCLR, 800 epochs (VISSL)",
    ),
    "mocov2-rn50": Checkpoint(
        _ZOO + "moco_v2_1node_lr.03_step_b32_zero_init/model_final_checkpoint_phase199.torch",
        "MoCo v2, 200 epochs (VISSL)",
    ),
    "swav-rn50": Checkpoint(
        _ZOO + "swav_in1k_rn50_800ep_swav_8node_resnet_27_07_20.a0a6b676/"
        "model_final_checkpoint_phase799.torch",
        "SwAV, 800 epochs (VISSL)",
    ),
    "pirl-rn50": Checkpoint(
        _ZOO + "pirl_jigsaw_4node_pirl_jigsaw_4node_resnet_22_07_20.34377f59/"
        "model_final_checkpoint_phase799.torch",
        "PIRL, 800 epochs (VISSL)",
    ),
    "jigsaw-rn50": Checkpoint(
        _ZOO + "jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_17_07_20.db174a43/"
        "model_final_checkpoint_phase104.torch",
        "Jigsaw, 2k permutations, 105 epochs (VISSL)",
    ),
    "rotnet-rn50": Checkpoint(
        _ZOO + "rotnet_rn50_in1k_ep105_rotnet_8gpu_resnet_17_07_20.46bada9f/"
        "model_final_checkpoint_phase125.torch",
        "RotNet, 105 epochs (VISSL)",
    ),
    "barlowtwins-rn50": Checkpoint(
        "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth",
        "Barlow Twins, 1000 epochs (torchvision layout)",
    ),
    "vicreg-rn50": Checkpoint(
        "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
        "VICReg, 1000 epochs (torchvision layout)",
    ),
}

# Short names: the method alone (``vissl:simclr``) means its ResNet-50.
ALIASES: dict[str, str] = {name.removesuffix("-rn50"): name for name in CHECKPOINTS}
ALIASES.update({"moco": "mocov2-rn50", "barlow": "barlowtwins-rn50"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def trunk_hints() -> ModelHints:
    """Stem and the four ResNet stages; 224×224 ImageNet-normalised input (how VISSL trains)."""
    return ModelHints(
        cuts=["maxpool", "layer1", "layer2", "layer3", "layer4"],
        input=InputSpec((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD),
    )


def cache_file_name(name: str, url: str) -> str:
    """Cache name for a zoo checkpoint: several URLs share a basename
    (``model_final_checkpoint_phase799.torch``, ``resnet50.pth``), so prefix ours."""
    return f"vissl-{name}-{Path(url).name}"


class VisslSource(ModelSource):
    name = "vissl"
    description = (
        "self-supervised ResNet-50 trunks (VISSL zoo, Barlow Twins, VICReg) by name or local "
        "checkpoint; @random for a control"
    )

    def known_names(self) -> list[str]:
        return sorted(CHECKPOINTS)

    def load(self, name: str, weights: str | None) -> LoadedModel:
        canonical = ALIASES.get(name, name)
        if canonical in CHECKPOINTS:
            return self._named(canonical, weights)
        # Not a zoo name: a local checkpoint path (``@`` may be part of the file name).
        path = Path(f"{name}@{weights}" if weights else name).expanduser()
        if path.is_file():
            return self._from_file(path, f"vissl:{path}", method=None)
        if Path(name).expanduser().is_file() and weights:
            raise StitchError(
                f"vissl:{name}@{weights}: a local checkpoint takes no @WEIGHTS (write vissl:PATH)"
            )
        if "/" in name or Path(name).suffix in (".torch", ".pth", ".pt", ".safetensors"):
            raise StitchError(f"vissl:{name}: no such checkpoint file: {path}")
        raise UnknownNameError(
            "VISSL model", name, [*CHECKPOINTS, *ALIASES], hint="or a path to a local checkpoint"
        )

    def _named(self, name: str, weights: str | None) -> LoadedModel:
        entry = CHECKPOINTS[name]
        weights = weights or "pretrained"
        seed = random_seed(weights)
        if seed is not None:
            with seeded(seed):
                model = resnet50_trunk()
            return self._loaded(model, f"vissl:{name}@{weights}", name, {"seed": seed})
        if weights == "pretrained":
            path = cached_download(
                entry.url,
                f"vissl:{name}",
                hint=(
                    f"download {entry.url} elsewhere and use vissl:{name}@PATH, or "
                    f"vissl:{name}@random"
                ),
                file_name=cache_file_name(name, entry.url),
            )
            return self._from_file(path, f"vissl:{name}@pretrained", method=name)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise StitchError(
                f"vissl:{name}@{weights}: no such checkpoint file (use @pretrained, @random or "
                "@PATH to a local checkpoint)"
            )
        return self._from_file(path, f"vissl:{name}@{path}", method=name)

    def _from_file(self, path: Path, spec: str, method: str | None) -> LoadedModel:
        model, facts = load_trunk(read_checkpoint(path), path.name)
        return self._loaded(model, spec, method, {"checkpoint": str(path), **facts})

    def _loaded(self, model: nn.Module, spec: str, method: str | None, meta: dict) -> LoadedModel:
        hints = trunk_hints()
        return LoadedModel(
            module=model.eval(),
            spec=spec,
            input=hints.input,
            hints=hints,
            num_classes=None,
            meta={
                "source": "vissl",
                "architecture": "resnet50",
                "method": method,
                "description": CHECKPOINTS[method].method if method else None,
                "head": None,
                **meta,
            },
        )


@stitchcore.hookimpl
def register_model_sources(register):
    register(VisslSource())


__all__ = ["ALIASES", "CHECKPOINTS", "VisslSource", "load_trunk", "resnet50_trunk"]
