"""Model specs (``SOURCE:NAME[@WEIGHTS]``), the ModelSource contract, LoadedModel, and the one
model builder (:func:`build_model`) that every path — ``load_model``, base-model training, the
zoo's rebuilds — goes through.

The core knows no source; plugins register them (``register_model_sources``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from . import plugins
from .errors import StitchError
from .spec import InputSpec, ModelHints
from .weights import random_seed


@dataclass
class LoadedModel:
    """A model ready for cutting: the module in eval mode plus what travels with it.

    spec: the canonical spec string it was loaded from (``timm:resnet18@random``).
    input: input shape and preprocessing; hints: default cuts and layouts;
    num_classes: size of the classifier output, if the model has one;
    meta: source-specific facts worth recording (weights file, head, training run).
    """

    module: nn.Module
    spec: str
    input: InputSpec
    hints: ModelHints = field(default_factory=ModelHints)
    num_classes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: how raw data becomes this model's input where it is not images (e.g. a tokenizer:
    #: ``list[str] -> tensor``); None for image models
    preprocess: Callable | None = field(default=None, repr=False, compare=False)
    #: which output is the logits when the model returns several (key, index or function)
    logits: Any = None

    def __post_init__(self) -> None:
        self.module.eval()
        if self.hints.input is None:
            self.hints.input = self.input


class ModelSource:
    """Base class for model sources. Subclasses set ``name`` and implement ``load``.

    ``load(name, weights)`` gets the part after ``SOURCE:`` split at the last ``@``; ``weights``
    is None when the spec has no ``@``. It raises StitchError (or a subclass such as
    UnknownNameError / OfflineError) for bad names or unavailable weights.
    """

    name: str = ""
    description: str = ""

    def load(self, name: str, weights: str | None) -> LoadedModel:
        raise NotImplementedError

    def load_variant(
        self, name: str, weights: str | None, *, width: float = 1.0, input_size: int | None = None
    ) -> LoadedModel:
        """The model with its architecture changed: channel ``width`` multiplier, or built for
        ``input_size`` px inputs (for base models trained here). Sources that can build such
        variants override it (timm does); the default builds only the model as it is."""
        if width != 1:
            raise StitchError(
                f"source {self.name!r} cannot scale model width (--width); it builds no variants"
            )
        return self.load(name, weights)

    def known_names(self) -> list[str]:
        """Model names for suggestions in errors (may be empty)."""
        return []


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``SOURCE:NAME[@WEIGHTS]``: parse it once (:func:`parse_spec`) and pass this."""

    source: str
    name: str
    weights: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" + (f"@{self.weights}" if self.weights else "")

    @property
    def is_random(self) -> bool:
        """Untrained weights (``@random``/``@random-SEED``)."""
        return random_seed(self.weights) is not None

    def with_weights(self, weights: str | None) -> ModelSpec:
        return replace(self, weights=weights)


def parse_spec(text: str | ModelSpec) -> ModelSpec:
    """Parse ``SOURCE:NAME[@WEIGHTS]``. NAME may contain ``/`` (hub ids, paths)."""
    if isinstance(text, ModelSpec):
        return text
    if ":" not in text:
        raise StitchError(
            f"model spec {text!r} has no source; write SOURCE:NAME[@WEIGHTS], "
            f"e.g. timm:resnet18 (sources: {', '.join(sorted(plugins.sources())) or 'none'})"
        )
    source, rest = text.split(":", 1)
    name, weights = rest.rsplit("@", 1) if "@" in rest else (rest, None)
    if not source or not name:
        raise StitchError(f"model spec {text!r} is incomplete; write SOURCE:NAME[@WEIGHTS]")
    if weights == "":
        raise StitchError(f"model spec {text!r} has an empty @WEIGHTS")
    return ModelSpec(source, name, weights)


def load_model(spec: str | ModelSpec) -> LoadedModel:
    """Load a model by spec, e.g. ``load_model("timm:resnet18@random")``."""
    return build_model(spec)


def build_model(
    spec: str | ModelSpec, *, width: float = 1.0, input_size: int | None = None
) -> LoadedModel:
    """The one model builder: the source's model for ``spec``, as it is or as a variant
    (``width``, ``input_size``: :meth:`ModelSource.load_variant`)."""
    if width <= 0:
        raise StitchError(f"--width must be positive, got {width:g}")
    parsed = parse_spec(spec)
    source = plugins.get_source(parsed.source)
    if width == 1 and input_size is None:
        loaded = source.load(parsed.name, parsed.weights)
    else:
        loaded = source.load_variant(
            parsed.name, parsed.weights, width=width, input_size=input_size
        )
    if not isinstance(loaded, LoadedModel):
        raise TypeError(f"source {parsed.source!r} returned {type(loaded).__name__}")
    return loaded


__all__ = [
    "LoadedModel",
    "ModelSource",
    "ModelSpec",
    "build_model",
    "load_model",
    "parse_spec",
    "random_seed",
]
