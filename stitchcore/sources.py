"""Model specs (``SOURCE:NAME[@WEIGHTS]``), the ModelSource contract and LoadedModel.

The core knows no source; plugins register them (``register_model_sources``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import plugins
from .errors import StitchError
from .spec import InputSpec, ModelHints


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

    def known_names(self) -> list[str]:
        """Model names for suggestions in errors (may be empty)."""
        return []


@dataclass(frozen=True)
class ModelSpec:
    source: str
    name: str
    weights: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" + (f"@{self.weights}" if self.weights else "")


def parse_spec(text: str) -> ModelSpec:
    """Parse ``SOURCE:NAME[@WEIGHTS]``. NAME may contain ``/`` (hub ids, paths)."""
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


def load_model(spec: str) -> LoadedModel:
    """Load a model by spec, e.g. ``load_model("timm:resnet18@random")``."""
    parsed = parse_spec(spec)
    source = plugins.get_source(parsed.source)
    loaded = source.load(parsed.name, parsed.weights)
    if not isinstance(loaded, LoadedModel):
        raise TypeError(f"source {parsed.source!r} returned {type(loaded).__name__}")
    return loaded
