"""Default cuts and input specs for torchvision classification models.

Each architecture family gets block-level cuts: the stem (the last module before the first
block) followed by each block or stage, the same granularity timm's ``feature_info`` gives.
The rules are keyed by class name, so they also cover a model that merely *is* a torchvision
class (a VISSL ResNet-50 trunk, a user's ``resnet50(num_classes=10)``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from stitchcore.plugin import InputSpec, ModelHints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _children(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{name}", child) for name, child in module.named_children()]


def _resnet(m: nn.Module) -> list[str]:
    return ["maxpool", "layer1", "layer2", "layer3", "layer4"]


def _after_pools(m: nn.Module) -> list[str]:
    """VGG, AlexNet: after each max-pool of ``features`` (the end of each conv stage)."""
    return [n for n, c in _children(m.features, "features") if isinstance(c, nn.MaxPool2d)]


def _every_feature(m: nn.Module) -> list[str]:
    """MobileNet, EfficientNet, ConvNeXt, Swin: ``features.0`` is the stem, then each block
    or stage (and, for ConvNeXt/Swin, each downsampling layer between stages)."""
    return [n for n, _ in _children(m.features, "features")]


def _squeezenet(m: nn.Module) -> list[str]:
    return [
        n
        for n, c in _children(m.features, "features")
        if isinstance(c, nn.MaxPool2d) or type(c).__name__ == "Fire"
    ]


def _densenet(m: nn.Module) -> list[str]:
    return ["features.pool0"] + [
        n
        for n, _ in _children(m.features, "features")
        if n.split(".")[-1].startswith(("denseblock", "transition"))
    ]


def _regnet(m: nn.Module) -> list[str]:
    return ["stem"] + [n for n, _ in _children(m.trunk_output, "trunk_output")]


def _shufflenet(m: nn.Module) -> list[str]:
    return ["maxpool", "stage2", "stage3", "stage4", "conv5"]


def _mnasnet(m: nn.Module) -> list[str]:
    """``layers`` is flat: stem convs, then one Sequential per stack, then the head conv."""
    kids = _children(m.layers, "layers")
    stacks = [i for i, (_, c) in enumerate(kids) if isinstance(c, nn.Sequential)]
    if not stacks:
        return [kids[-1][0]]
    return [kids[stacks[0] - 1][0]] + [kids[i][0] for i in stacks] + [kids[-1][0]]


def _googlenet(m: nn.Module) -> list[str]:
    return ["maxpool2"] + [n for n, c in m.named_children() if type(c).__name__ == "Inception"]


def _inception3(m: nn.Module) -> list[str]:
    return ["maxpool2"] + [n for n, _ in m.named_children() if n.startswith("Mixed_")]


def _maxvit(m: nn.Module) -> list[str]:
    return ["stem"] + [n for n, _ in _children(m.blocks, "blocks")]


def _vit(m: nn.Module) -> list[str]:
    """Tokens after the position embedding (``encoder.dropout``), then each encoder layer."""
    return ["encoder.dropout"] + [n for n, _ in _children(m.encoder.layers, "encoder.layers")]


CUT_RULES: dict[str, Callable[[nn.Module], list[str]]] = {
    "ResNet": _resnet,
    "VGG": _after_pools,
    "AlexNet": _after_pools,
    "MobileNetV2": _every_feature,
    "MobileNetV3": _every_feature,
    "EfficientNet": _every_feature,
    "ConvNeXt": _every_feature,
    "SwinTransformer": _every_feature,
    "SqueezeNet": _squeezenet,
    "DenseNet": _densenet,
    "RegNet": _regnet,
    "ShuffleNetV2": _shufflenet,
    "MNASNet": _mnasnet,
    "GoogLeNet": _googlenet,
    "Inception3": _inception3,
    "MaxVit": _maxvit,
    "VisionTransformer": _vit,
}


def is_torchvision_model(model: nn.Module) -> bool:
    """A model whose class is one of torchvision's classification architectures."""
    cls = type(model)
    return cls.__module__.startswith("torchvision.models.") and cls.__name__ in CUT_RULES


def input_size(model: nn.Module, default: int = 224) -> int:
    """Side of the square input the model was designed (or trained) for."""
    name = type(model).__name__
    if name == "Inception3":
        return 299
    if name == "VisionTransformer":
        return int(model.image_size)
    return default


def hints_for(model: nn.Module, size: int | None = None) -> ModelHints | None:
    """Default cuts, input spec (ImageNet normalisation) and layouts for a torchvision model,
    or None for a model of another class. ``size`` overrides the input side (e.g. the crop
    size of the weights the model was loaded with)."""
    rule = CUT_RULES.get(type(model).__name__)
    if rule is None:
        return None
    side = input_size(model, size or 224)
    name = type(model).__name__
    return ModelHints(
        cuts=rule(model),
        input=InputSpec((3, side, side), mean=IMAGENET_MEAN, std=IMAGENET_STD),
        spatial_layout="nhwc" if name == "SwinTransformer" else "nchw",
        prefix_tokens=1 if name == "VisionTransformer" else 0,
    )
