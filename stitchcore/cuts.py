"""Named cuts and the public cutting API: ``list_cuts`` and ``split``.

Cut names are module paths (``layer2``, ``blocks.5``) that resolve to the last graph node inside
that module, or raw node names (``layer1.0.add``). Every cut handed out satisfies
``suffix(prefix(x)) == model(x)`` on the example input; a cut that would not is never listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import plugins
from .errors import CutError, StitchError, UnknownNameError
from .graph import CutPoint, TracedGraph, TracerPolicy, outputs_close
from .sources import LoadedModel
from .spec import ActivationSpec, InputSpec, ModelHints, infer_activation_spec


@dataclass(frozen=True)
class Cut:
    """A point where a model splits: ``name`` as asked for, the ``node`` it resolves to, the
    ``spec`` of the activation crossing it, and its ``index`` in forward order."""

    name: str
    node: str
    spec: ActivationSpec
    index: int

    def to_json(self) -> dict:
        return {"name": self.name, "node": self.node, "index": self.index, **self.spec.to_json()}


class CutBackend:
    """Lists, resolves and splits the cuts of one model. The core's FX backend implements it;
    a plugin can provide another through the ``cut_backend`` hook.

    ``split`` returns ``(prefix, suffix)``: ``prefix(x) -> act``. A suffix that needs side
    inputs recomputed from the model's own input (attention masks) sets
    ``needs_context = True`` and is called as ``suffix(act, x)``; others as ``suffix(act)``.
    """

    def default_cuts(self) -> list[Cut]:
        raise NotImplementedError

    def all_cuts(self) -> list[Cut]:
        raise NotImplementedError

    def resolve(self, name: str) -> Cut:
        raise NotImplementedError

    def split(self, cut: Cut) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        """One module returning the activations at several cuts (a tuple) in one pass."""
        raise NotImplementedError


class FxBackend(CutBackend):
    """Cuts through a torch.fx (or torch.export) graph; see graph.py."""

    def __init__(self, model: nn.Module, example: torch.Tensor, hints: ModelHints) -> None:
        policy = TracerPolicy.merge(plugins.call_all("tracer_policy", model=model))
        self.graph = TracedGraph(model, example, policy)
        self.hints = hints
        self.model_name = type(model).__name__
        self.module_paths = {name for name, _ in model.named_modules() if name}
        self._valid = {p.node: p for p in self.graph.valid_cuts()}
        self.skipped: list[str] = []

    def _cut(self, name: str, point: CutPoint) -> Cut:
        meta = self.graph.meta[point.node]
        spec = infer_activation_spec(
            meta.shape,
            meta.dtype,
            spatial_layout=self.hints.spatial_layout,
            prefix_tokens=self.hints.prefix_tokens,
        )
        return Cut(name, point.name, spec, self.graph.pos[point.node])

    def all_cuts(self) -> list[Cut]:
        return [self._cut(p.name, p) for p in self._valid.values()]

    def default_cuts(self) -> list[Cut]:
        names = self.hints.cuts or self._top_level()
        cuts: dict[str, Cut] = {}
        self.skipped = []
        for name in names:
            try:
                cut = self.resolve(name)
            except StitchError as exc:
                self.skipped.append(f"{name}: {exc}")
                continue
            cuts.setdefault(cut.node, cut)
        return sorted(cuts.values(), key=lambda c: c.index)

    def _top_level(self) -> list[str]:
        return [p for p in self.module_paths if "." not in p]

    def _node_for(self, name: str):
        g = self.graph
        if name in g.by_name:
            return g.by_name[name]
        if name in self.module_paths:
            inside = [n for n in g.order if g.names[n].startswith(name + ".")]
            if inside:
                return inside[-1]
            raise CutError(f"module {name!r} has no node of its own in the traced graph")
        known = [c.name for c in self.all_cuts()] + sorted(self.module_paths)
        raise UnknownNameError("cut", name, known, hint=f"`stitch cuts MODEL --all` lists them")

    def resolve(self, name: str) -> Cut:
        node = self._node_for(name)
        point = self._valid.get(node) or self.graph.cut_point(node)  # raises CutError
        return self._cut(name, point)

    def split(self, cut: Cut) -> tuple[nn.Module, nn.Module]:
        point = self._valid[self.graph.by_name[cut.node]]
        return self.graph.prefix(point), self.graph.suffix(point)

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        return self.graph.extractor([self.graph.by_name[c.node] for c in cuts])


def _unwrap(model: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    if isinstance(model, LoadedModel):
        return model.module, model
    if isinstance(model, nn.Module):
        return model, None
    raise TypeError(f"expected an nn.Module or LoadedModel, got {type(model).__name__}")


def model_hints(model: nn.Module | LoadedModel) -> ModelHints:
    module, loaded = _unwrap(model)
    if loaded is not None:
        return loaded.hints
    return plugins.call_first("model_hints", model=module) or ModelHints()


def example_for(model: nn.Module | LoadedModel, example_input=None, batch: int = 2):
    """A batched example input: the one given, else from the model's input spec."""
    if example_input is not None:
        return example_input
    spec: InputSpec | None = model_hints(model).input
    if spec is None:
        raise StitchError(
            f"cannot tell the input shape of {type(_unwrap(model)[0]).__name__}: pass "
            "example_input=<a batched tensor> (no LoadedModel or plugin metadata describes it)"
        )
    return spec.example(batch)


class Cutter:
    """Cuts one model, tracing it once. ``list_cuts`` and ``split`` are one-shot shortcuts."""

    def __init__(self, model: nn.Module | LoadedModel, example_input=None) -> None:
        self.module, self.loaded = _unwrap(model)
        self.module.eval()
        self.hints = model_hints(model)
        self.example = example_for(model, example_input)
        backend = plugins.call_first("cut_backend", model=self.module, example=self.example)
        self.backend: CutBackend = backend or FxBackend(self.module, self.example, self.hints)
        with torch.no_grad():
            self.expected = self.module(self.example)

    @property
    def label(self) -> str:
        return self.loaded.spec if self.loaded else type(self.module).__name__

    def cuts(self, all: bool = False) -> list[Cut]:
        cuts = self.backend.all_cuts() if all else self.backend.default_cuts()
        return [c for c in cuts if self._check(c)]

    def resolve(self, name: str) -> Cut:
        return self.backend.resolve(name)

    def split(self, name: str | Cut) -> tuple[nn.Module, nn.Module]:
        cut = name if isinstance(name, Cut) else self.resolve(name)
        prefix, suffix = self.backend.split(cut)
        if not self._recomposes(prefix, suffix):
            raise CutError(f"cut {cut.name!r} of {self.label}: suffix(prefix(x)) != model(x)")
        return prefix, suffix

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        return self.backend.extractor(cuts)

    def _check(self, cut: Cut) -> bool:
        prefix, suffix = self.backend.split(cut)
        return self._recomposes(prefix, suffix)

    def _recomposes(self, prefix: nn.Module, suffix: nn.Module) -> bool:
        with torch.no_grad():
            act = prefix(self.example)
            before = act.clone()
            out = run_suffix(suffix, act, self.example)
        return outputs_close(out, self.expected) and torch.equal(act, before)


def run_suffix(suffix: nn.Module, act: torch.Tensor, inputs=None):
    """Call a suffix, handing it the model's own input when it needs side inputs."""
    if getattr(suffix, "needs_context", False):
        return suffix(act, inputs)
    return suffix(act)


def list_cuts(
    model: nn.Module | LoadedModel, all: bool = False, example_input=None
) -> list[Cut]:
    """Cuts of a model: block/stage boundaries by default, every valid node with ``all=True``."""
    return Cutter(model, example_input).cuts(all=all)


def split(
    model: nn.Module | LoadedModel, cut_name: str, example_input=None
) -> tuple[nn.Module, nn.Module]:
    """``(prefix, suffix)`` modules with ``suffix(prefix(x)) == model(x)``."""
    return Cutter(model, example_input).split(cut_name)
