"""Named cuts and the public cutting API: ``list_cuts`` and ``split``.

Cut names are module paths (``layer2``, ``blocks.5``) that resolve to the last graph node inside
that module (or, for an element of a block loop whose residual is added in the parent's loop,
to the end of that loop iteration: iteration.py), or raw node names (``layer1.0.add``). Every
cut handed out satisfies ``suffix(prefix(x), x) == model(x)``: a cut that would not is never
listed.

A model may take several inputs: the example is then a tuple (positional inputs) or a dict
(keyword inputs). The first is the *primary* input, the one whose activations cross the cut;
the others are side inputs that a suffix reads from the receiver's own inputs (tracing.py).

Default cuts are block/stage boundaries starting with the stem. They come from the model's
hints (a plugin's, e.g. timm's ``feature_info``), repaired where those names do not resolve or
sit inside a residual block, from the module structure (``default_hints.default_cuts``), and, as
a last resort, from the top-level modules that are valid cuts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from . import default_hints, plugins
from .errors import CutError, StitchError, UnknownNameError
from .graph import (
    CutPoint,
    TracedGraph,
    TracerPolicy,
    batch_size,
    outputs_close,
    resize_batch,
)
from .iteration import iteration_end
from .layout import fast_layout
from .sources import LoadedModel
from .spec import ActivationSpec, InputSpec, ModelHints, infer_activation_spec
from .tracing import call_model, primary_input

__all__ = [
    "Cut",
    "CutBackend",
    "Cutter",
    "FxBackend",
    "batch_size",
    "call_model",
    "example_for",
    "list_cuts",
    "model_hints",
    "recomposes",
    "resize_batch",
    "run_suffix",
    "split",
]


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

    ``split`` returns ``(prefix, suffix)``: ``prefix(x) -> act``, where ``x`` is the whole
    input as the example gives it (a tensor, a tuple or a dict). A suffix that needs side
    inputs from the model's own input (attention masks, a second modality) sets
    ``needs_context = True`` and is called as ``suffix(act, x)``; others as ``suffix(act)``
    (``run_suffix`` does either).
    """

    def modules(self) -> list[nn.Module]:
        """The modules the backend's prefixes, suffixes and extractors run (moved by
        :meth:`Cutter.to`). Default: every module the backend holds as an attribute."""
        return [v for v in vars(self).values() if isinstance(v, nn.Module)]

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

    def reference(self, x: torch.Tensor):
        """What ``suffix(prefix(x))`` is checked against: None for the model's own output; a
        backend that cuts its own copy of the model returns that copy's output."""
        return None

    def fast_layout(self) -> bool:
        """Put the backend's own copy in the layout it runs fastest in (layout.py); True when
        that changed anything. Outputs then equal the model's to that layout's rounding."""
        return False

    def verify(self, cuts: list[Cut], x: torch.Tensor, expected) -> dict[str, bool]:
        """For each cut (by node name): does ``suffix(prefix(x))`` equal ``expected`` without
        modifying the activation? This default splits each cut and runs both halves; a backend
        that can do it in one pass over the model overrides it."""
        results = {}
        for cut in cuts:
            try:
                prefix, suffix = self.split(cut)
            except StitchError:
                results[cut.node] = False
                continue
            results[cut.node] = recomposes(prefix, suffix, x, expected)
        return results


class FxBackend(CutBackend):
    """Cuts through a torch.fx (or torch.export) graph; see graph.py."""

    def __init__(self, model: nn.Module, example: Any, hints: ModelHints) -> None:
        policy = TracerPolicy.merge(plugins.call_all("tracer_policy", model=model))
        self.graph = TracedGraph(model, example, policy)
        self.hints = hints
        self.model = model
        self.model_name = type(model).__name__
        self.module_paths = {name for name, _ in model.named_modules() if name}
        self._valid = {p.node: p for p in self.graph.valid_cuts()}
        primary = primary_input(example)  # the input whose activations cross a cut
        self._image_hw = tuple(primary.shape[-2:]) if primary.dim() == 4 else None
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ listing
    def _cut(self, name: str, point: CutPoint) -> Cut:
        meta = self.graph.meta[point.node]
        shape = meta.shape[1:]
        spec = infer_activation_spec(
            meta.shape,
            meta.dtype,
            spatial_layout=_spatial_layout(shape, self.hints.spatial_layout, self._image_hw),
            prefix_tokens=_prefix_tokens(shape, self.hints.prefix_tokens, self._image_hw),
        )
        return Cut(name, point.name, spec, self.graph.pos[point.node])

    def all_cuts(self) -> list[Cut]:
        return [self._cut(p.name, p) for p in self._valid.values()]

    def default_cuts(self) -> list[Cut]:
        self.skipped = []
        cuts, failed = self._resolve_many(self.hints.cuts or [])
        if failed or not cuts:
            # hint names that do not resolve (timm twins: ``block.N`` for ``blocks.N``) or
            # that sit inside a residual block (legacy_xception ``block2.rep.0``): add what
            # the module structure says
            structural, _ = self._resolve_many(default_hints.block_cuts(self.model))
            cuts = _merge(cuts, structural)
        if cuts:
            cuts = _merge(self._stem(cuts), cuts)
        else:  # no structure known: the top-level modules that are valid cuts, else all
            top = [p for p, _ in self.model.named_children()]
            cuts = self._resolve_many(top)[0] or self.all_cuts()
        self.skipped = failed
        # a cut at the model's output leaves an empty suffix: valid, but no block boundary
        final = set(self.graph.output.all_input_nodes)
        return [c for c in cuts if self.graph.by_name[c.node] not in final]

    def _resolve_many(self, names: list[str]) -> tuple[list[Cut], list[str]]:
        cuts: dict[str, Cut] = {}
        failed = []
        for name in names:
            try:
                cut = self.resolve(name)
            except StitchError as exc:
                failed.append(f"{name}: {exc}")
                continue
            cuts.setdefault(cut.node, cut)
        return sorted(cuts.values(), key=lambda c: c.index), failed

    def _stem(self, cuts: list[Cut]) -> list[Cut]:
        """The stem cut when the defaults start at the first block (``blocks.0``, ``layers.0``,
        ``layer1``): the last valid cut before the block container's first node."""
        first = cuts[0].name
        if first not in self.module_paths:
            return []
        element = re.fullmatch(r"(.+)\.\d+", first)
        if element:
            container = element.group(1)
        elif default_hints.NUMBERED.fullmatch(first):
            container = first
        else:
            return []
        g = self.graph
        inside = (
            n for n in g.order if g.names[n] == container or g.names[n].startswith(container + ".")
        )
        start = next((g.pos[n] for n in inside), None)
        before = [p for p in self._valid.values() if start is not None and g.pos[p.node] < start]
        if not before:
            return []
        point = max(before, key=lambda p: g.pos[p.node])
        return [self._cut(self._short_name(point.node), point)]

    def _short_name(self, node: fx.Node) -> str:
        """The shortest module path that resolves to ``node`` (``patch_embed`` for
        ``patch_embed.norm``), else the node's own name."""
        name = self.graph.names[node]
        parts = name.split(".")
        for k in range(1, len(parts)):
            path = ".".join(parts[:k])
            if path in self.module_paths:
                try:
                    if self._node_for(path) is node:
                        return path
                except StitchError:
                    continue
        return name

    # ------------------------------------------------------------------ resolving
    def _node_for(self, name: str) -> fx.Node:
        """The node a name means: a node's own name, else the last node inside that module.
        A module that is one element of a block loop, and whose own last node is no valid cut
        (the residual is added in the parent's loop), means the end of its loop iteration
        (iteration.py) when that is a valid cut."""
        g = self.graph
        node = g.by_name.get(name)
        if node is None and name in self.module_paths:
            inside = [n for n in g.order if g.names[n].startswith(name + ".")]
            if not inside:
                leaf = self._enclosing_node(name)
                if leaf:
                    raise CutError(
                        f"cannot cut at {name!r}: it runs inside {leaf!r}, which is traced as "
                        f"one node (a leaf module); cut at {leaf!r} instead"
                    )
                raise CutError(f"module {name!r} has no node of its own in the traced graph")
            node = inside[-1]
        if node is None:
            known = [c.name for c in self.all_cuts()] + sorted(self.module_paths)
            raise UnknownNameError("cut", name, known, hint="`stitch cuts MODEL --all` lists them")
        if node not in self._valid and name in self.module_paths:
            end = iteration_end(g, self.model, name, self._valid)
            if end is not None:
                return end
        return node

    def _enclosing_node(self, name: str) -> str | None:
        parts = name.split(".")
        for k in range(len(parts) - 1, 0, -1):
            path = ".".join(parts[:k])
            if path in self.graph.by_name:
                return path
        return None

    def resolve(self, name: str) -> Cut:
        node = self._node_for(name)
        point = self._valid.get(node) or self.graph.cut_point(node)  # raises CutError
        return self._cut(name, point)

    # ------------------------------------------------------------------ modules
    def split(self, cut: Cut) -> tuple[nn.Module, nn.Module]:
        point = self._point(cut)
        return self.graph.prefix(point), self.graph.suffix(point)

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        if not cuts:
            raise StitchError("an extractor needs at least one cut")
        return self.graph.extractor([self._point(c).node for c in cuts])

    def reference(self, x):
        # the traced copy equals the model (checked when traced) in its own layout
        return self.graph.call(x)

    def fast_layout(self) -> bool:
        fast_layout(self.graph.gm)
        return True

    def modules(self) -> list[nn.Module]:
        return [self.graph.gm]  # the traced copy: the user's model stays where it is

    def verify(self, cuts: list[Cut], x: torch.Tensor, expected) -> dict[str, bool]:
        by_node = self.graph.verify([self._point(c) for c in cuts], x, expected)
        return {self.graph.names[n]: ok for n, ok in by_node.items()}

    def _point(self, cut: Cut) -> CutPoint:
        node = self.graph.by_name.get(cut.node)
        if node is None:
            raise UnknownNameError("cut node", cut.node, self.graph.by_name)
        return self._valid.get(node) or self.graph.cut_point(node)

    def no_cut_reason(self) -> str:
        return self.graph.no_cut_reason()


def _merge(first: list[Cut], second: list[Cut]) -> list[Cut]:
    """Both lists, one cut per node (the first list's name wins), in forward order."""
    cuts: dict[str, Cut] = {}
    for cut in [*first, *second]:
        cuts.setdefault(cut.node, cut)
    return sorted(cuts.values(), key=lambda c: c.index)


def _same_aspect(h: int, w: int, image_hw: tuple[int, ...]) -> bool:
    """Could (h, w) be the image's (H, W) divided by some stride (rounding allowed)?"""
    big_h, big_w = image_hw
    return 0 < h <= big_h and 0 < w <= big_w and abs(h * big_w - w * big_h) <= max(big_h, big_w)


def _spatial_layout(shape: tuple[int, ...], hint: str, image_hw) -> str:
    """nchw or nhwc for a per-sample 3-D shape: the one whose spatial dims have the input
    image's aspect ratio when only one does (convnext's channels-last MLPs, swin's NCHW patch
    conv), else the model's hint."""
    if len(shape) != 3 or not image_hw:
        return hint
    as_nchw = _same_aspect(shape[1], shape[2], image_hw)
    as_nhwc = _same_aspect(shape[0], shape[1], image_hw)
    if as_nchw != as_nhwc:
        return "nchw" if as_nchw else "nhwc"
    return hint


def _is_grid(n: int, image_hw) -> bool:
    """Can ``n`` tokens be an (h, w) patch grid of the input image?"""
    return any(n % h == 0 and _same_aspect(h, n // h, image_hw) for h in range(1, n + 1))


def _prefix_tokens(shape: tuple[int, ...], hint: int, image_hw) -> int:
    """The model's prefix-token count, unless this token sequence has none yet (a ViT's patch
    embedding before the class token is prepended)."""
    if len(shape) != 2 or not hint:
        return hint
    n = shape[0]
    if image_hw and _is_grid(n, image_hw) and not _is_grid(n - hint, image_hw):
        return 0
    return hint


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
    """A batched example input: the one given, else from the model's input spec.

    A tensor, a tuple of tensors (positional inputs) or a dict of them (keyword inputs), every
    tensor batch first (a plugin's cut backend may take other structures, such as HF's
    tokenizer output).
    """
    if example_input is not None:
        if batch_size(example_input) is None:
            raise StitchError(
                "example_input must be a batched tensor (batch dimension first), or a "
                "tuple/dict of them"
            )
        return example_input
    spec: InputSpec | None = model_hints(model).input
    if spec is None:
        raise StitchError(
            f"cannot tell the input shape of {type(_unwrap(model)[0]).__name__}: pass "
            "example_input=<a batched tensor> (no LoadedModel or plugin metadata describes it)"
        )
    return spec.example(batch)


def recomposes(prefix: nn.Module, suffix: nn.Module, x, expected) -> bool:
    """``suffix(prefix(x), x)`` (``x`` only for a suffix that ``needs_context``) equals
    ``expected`` (same dtypes, allclose 1e-5) and the suffix left the activation it was handed
    untouched."""
    with torch.no_grad():
        act = prefix(x)
        before = act.clone()
        try:
            out = run_suffix(suffix, act, x)
        except Exception:  # a suffix that cannot run is a cut that does not recompose
            return False
    return outputs_close(out, expected) and torch.equal(act, before)


class Cutter:
    """Cuts one model, tracing it once. ``list_cuts`` and ``split`` are one-shot shortcuts.

    Every listed cut is verified on a batch of a different size than the example (one more
    sample), so a cut whose suffix only works at the example's batch size is never listed.

    ``example_input`` is a tensor, or a tuple/dict of tensors for a model with several inputs
    (see the module docstring); prefixes, extractors and ``reference`` take it as one argument.
    """

    def __init__(self, model: nn.Module | LoadedModel, example_input=None) -> None:
        self.module, self.loaded = _unwrap(model)
        self.module.eval()
        self.hints = model_hints(model)
        # a model already on a GPU is traced and checked there, with the example moved to it
        self.example = _to(example_for(model, example_input), _device_of(self.module))
        backend = plugins.call_first("cut_backend", model=self.module, example=self.example)
        self.backend: CutBackend = backend or FxBackend(self.module, self.example, self.hints)
        self.expected = self.reference(self.example)
        self._verified: dict[str, bool] = {}
        self._check_input: torch.Tensor | None = None
        self._check_expected = None

    @property
    def label(self) -> str:
        return self.loaded.spec if self.loaded else type(self.module).__name__

    def cuts(self, all: bool = False) -> list[Cut]:
        """Verified cuts: block/stage boundaries (default) or every valid node (``all``).

        Raises CutError when the model has no valid cut at all.
        """
        cuts = self.backend.all_cuts() if all else self.backend.default_cuts()
        self._verify(cuts)
        good = [c for c in cuts if self._verified.get(c.node)]
        if not good and not all:  # no block boundary works: offer whatever does
            return self.cuts(all=True)
        if not good:
            reason = getattr(self.backend, "no_cut_reason", lambda: "")()
            raise CutError(
                f"{self.label} has no valid cut: no point where a single tensor carries "
                "everything the rest of the model needs" + (f" ({reason})" if reason else "")
            )
        return good

    def _verify(self, cuts: list[Cut]) -> None:
        todo = [c for c in cuts if c.node not in self._verified]
        if not todo:
            return
        if self._check_input is None:
            self._check_input = resize_batch(self.example, batch_size(self.example) + 1)
            self._check_expected = self.reference(self._check_input)
        self._verified.update(self.backend.verify(todo, self._check_input, self._check_expected))

    def fast_layout(self) -> Cutter:
        """Run every prefix, suffix and extractor of this cutter in the fastest layout from now
        on (channels-last convolutions: 1.6-1.7x faster on a CPU, see layout.py). For engines
        such as ``stitch matrix``: the cut modules then reproduce the model to the new layout's
        rounding, which a random deep net amplifies (0.2 % relative at the output of a random
        Inception-v3), not to the 1e-5 the plain cutter guarantees. The caller's model is not
        touched."""
        if self.backend.fast_layout():
            self.expected = self.reference(self.example)
            self._check_input = self._check_expected = None
        return self

    def to(self, device: torch.device | str) -> Cutter:
        """Run every prefix, suffix and extractor of this cutter on ``device`` from now on (the
        backend's modules and the check example move; the FX backend moves its own traced copy,
        so the caller's model is not touched)."""
        device = torch.device(device)
        for module in self.backend.modules():
            module.to(device)
        self.example = _to(self.example, device)
        self.expected = _to(self.expected, device)
        self._check_input = self._check_expected = None
        return self

    @property
    def device(self) -> torch.device:
        for module in self.backend.modules():
            for t in (*module.parameters(), *module.buffers()):
                return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def reference(self, x):
        """The output every split is checked against on input ``x`` (given as the example is):
        the backend's own copy of the model (the FX graph, equal to the model), else
        ``module(x)`` for a plugin backend, which calls its model with the whole input."""
        out = self.backend.reference(x)
        return self.module(x) if out is None else out

    def resolve(self, name: str) -> Cut:
        return self.backend.resolve(name)

    def split(self, name: str | Cut) -> tuple[nn.Module, nn.Module]:
        cut = name if isinstance(name, Cut) else self.resolve(name)
        prefix, suffix = self.backend.split(cut)
        if not recomposes(prefix, suffix, self.example, self.expected):
            raise CutError(f"cut {cut.name!r} of {self.label}: suffix(prefix(x)) != model(x)")
        return prefix, suffix

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        return self.backend.extractor(cuts)


def _device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _to(value: Any, device: torch.device) -> Any:
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def run_suffix(suffix: nn.Module, act: torch.Tensor, inputs=None):
    """Call a suffix, handing it the model's own input when it needs side inputs."""
    if getattr(suffix, "needs_context", False):
        return suffix(act, inputs)
    return suffix(act)


def list_cuts(model: nn.Module | LoadedModel, all: bool = False, example_input=None) -> list[Cut]:
    """Cuts of a model: block/stage boundaries by default, every valid node with ``all=True``."""
    return Cutter(model, example_input).cuts(all=all)


def split(
    model: nn.Module | LoadedModel, cut_name: str, example_input=None
) -> tuple[nn.Module, nn.Module]:
    """``(prefix, suffix)`` modules with ``suffix(prefix(x)) == model(x)``."""
    return Cutter(model, example_input).split(cut_name)
