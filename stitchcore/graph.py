"""Tracing a model into a graph and cutting that graph into prefix and suffix.

torch.fx first (with module-path node names and the tracer policies plugins contribute), then
``torch.export`` (non-strict, dynamic batch) when FX fails or disagrees with eager. Both give an
``fx.GraphModule`` and a name for every node, so one cutting routine serves both.

A node is a *valid cut* when, right after it, the only input-dependent value still needed later
is the node's own tensor. Values that only depend on the input's *shape* may also cross: each is
replayed in the suffix, either as a constant (same value for two batch sizes) or from the
activation's batch size; anything else crossing (a skip connection) makes the cut invalid.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import CutError, StitchError


@dataclass
class TracerPolicy:
    """What a tracer must not look inside (leaf modules) or trace through (autowrap)."""

    leaf_modules: tuple[type, ...] = ()
    autowrap_functions: tuple[Callable, ...] = ()
    autowrap_modules: tuple[ModuleType, ...] = ()

    @classmethod
    def merge(cls, policies: Iterable[TracerPolicy]) -> TracerPolicy:
        leaves: dict[type, None] = {}
        funcs: dict[Callable, None] = {}
        mods: dict[ModuleType, None] = {}
        for p in policies:
            leaves.update(dict.fromkeys(p.leaf_modules))
            funcs.update(dict.fromkeys(p.autowrap_functions))
            mods.update(dict.fromkeys(p.autowrap_modules))
        return cls(tuple(leaves), tuple(funcs), tuple(mods))


class _PathTracer(fx.Tracer):
    """FX tracer that names each node by module path, like torchvision's feature extraction:
    ``layer1.0.conv1`` for a module call, ``layer1.0.add`` for an op inside ``layer1.0``, and
    ``layer1.0.relu_1`` when a name repeats."""

    def __init__(self, policy: TracerPolicy) -> None:
        import math

        super().__init__(
            autowrap_modules=(math, *policy.autowrap_modules),
            autowrap_functions=policy.autowrap_functions,
            param_shapes_constant=True,
        )
        self._leaves = policy.leaf_modules
        self._scope = ""
        self.names: dict[fx.Node, str] = {}
        self._seen: dict[str, int] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaves and isinstance(m, self._leaves):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        outer = self._scope
        self._scope = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope = outer

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        node = proxy.node
        if kind == "call_module":
            base = str(target)
        elif kind in ("call_function", "call_method"):
            op = re.sub(r"_\d+$", "", node.name)
            base = f"{self._scope}.{op}" if self._scope else op
        elif kind == "get_attr":
            base = str(target)
        else:
            base = node.name
        self.names[node] = _dedupe(base, self._seen)
        return proxy


def _dedupe(base: str, seen: dict[str, int]) -> str:
    count = seen.get(base, 0)
    seen[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


def outputs_close(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
    """Same structure of tensors, same dtypes, allclose."""
    fa, fb = _flat_tensors(a), _flat_tensors(b)
    return len(fa) == len(fb) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.allclose(x, y, atol=atol, rtol=rtol)
        for x, y in zip(fa, fb)
    )


# ----------------------------------------------------------------------------- tracing
def _trace_fx(model: nn.Module, policy: TracerPolicy) -> tuple[fx.GraphModule, dict]:
    tracer = _PathTracer(policy)
    graph = tracer.trace(model, concrete_args=_constant_defaults(model) or None)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return gm, {n: tracer.names.get(n, n.name) for n in gm.graph.nodes}


def _constant_defaults(model: nn.Module) -> dict[str, Any]:
    """Optional inputs left at their defaults (``mask=None``, ``is_causal=False``) are traced
    as constants, so ``if mask is not None`` / ``if is_causal`` take the branch the model takes
    when called with its one input (left as placeholders they would be Proxies)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default
        for p in params[1:]
        if p.kind in kinds and (p.default is None or type(p.default) in (bool, int, float, str))
    }


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # older torch spells paths like "L['self'].layer1.0" or "L__self___layer1_0"
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    return path


def _trace_export(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, dict]:
    from torch.export import Dim, export

    ep = export(model, (example,), strict=False, dynamic_shapes=({0: Dim("batch")},))
    gm = _plain_calling_convention(ep.module())
    seen: dict[str, int] = {}
    names = {}
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method"):
            op = re.sub(r"_\d+$", "", n.name)
            path = _module_path(n)
            names[n] = _dedupe(f"{path}.{op}" if path else op, seen)
        else:
            names[n] = _dedupe(n.name, seen)
    return gm, names


def _plain_calling_convention(gm: fx.GraphModule) -> fx.GraphModule:
    """Make an exported module take its input and return its output like the model does.

    ``ExportedProgram.module()`` flattens inputs and outputs with pytree code generation; a
    prefix or suffix copied from its graph would return a flat tuple. Here the graph itself
    rebuilds the model's output structure (a single tensor stays a tensor).
    """
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None:
        return gm
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    leaves = list(output.args[0])
    graph.set_codegen(fx.graph.CodeGen())
    if info.out_spec is None or info.out_spec.is_leaf():
        result = leaves[0]
    else:
        gm.stitch_out_spec = info.out_spec
        with graph.inserting_before(output):
            spec = graph.get_attr("stitch_out_spec")
            result = graph.call_function(tree_unflatten, (leaves, spec))
    output.args = (result,)
    gm.recompile()
    return gm


@dataclass
class CutPoint:
    """A node of the traced graph that is a valid cut, with what the suffix must replay."""

    node: fx.Node
    name: str  # the node's qualified name
    replay: dict[fx.Node, Any] = field(default_factory=dict)  # shape value -> constant/batch


_BATCH = object()  # marker: "this value is the batch size"

# Tracers tried in order. benchmarks/cut_survey.py --backend export sets ("export",) to measure
# the fallback on models FX could trace.
BACKENDS: tuple[str, ...] = ("fx", "export")


class TracedGraph:
    """A model traced once, analysed for cuts, and cut as often as needed.

    ``example`` is a batched input (batch size ≥ 2). Raises StitchError when neither FX nor
    torch.export can trace the model faithfully.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, policy: TracerPolicy) -> None:
        self.model = copy.deepcopy(model).eval()  # tracing can poison module caches
        self.example = example
        errors = []
        with torch.no_grad():
            expected = self.model(example)
        self.backend = ""
        for backend in BACKENDS:
            try:
                traced = copy.deepcopy(self.model)
                if backend == "fx":
                    gm, names = _trace_fx(traced, policy)
                else:
                    gm, names = _trace_export(traced, example)
                # a failing GraphModule prints its generated code to stderr before raising
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    got = gm(example)
                if not outputs_close(got, expected):
                    raise StitchError("traced graph's output differs from the model's")
                self.gm, self.names, self.backend = gm, names, backend
                break
            except Exception as exc:  # any tracer failure means: try the next backend
                errors.append(f"{backend}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        if not self.backend:
            raise StitchError(
                f"cannot trace {type(model).__name__} with torch.fx or torch.export ({'; '.join(errors)})"
            )
        self.trace_errors = errors
        self.expected = expected
        self._analyse()

    # ------------------------------------------------------------------ analysis
    def _analyse(self) -> None:
        graph = self.gm.graph
        output = next(n for n in graph.nodes if n.op == "output")
        needed: set[fx.Node] = set()
        # In-place ops whose result nobody reads (``x.add_(1)`` without reassignment) still
        # change a value that later nodes read: keep them, or prefix and suffix would drop them.
        stack = [output, *(n for n in graph.nodes if _is_inplace(n, self.gm))]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        self.order = [n for n in graph.nodes if n in needed or n.op == "placeholder"]
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.output = output
        placeholders = [n for n in self.order if n.op == "placeholder"]
        # placeholders with a default (attn_mask=None, …) are constants
        self.inputs = [p for p in placeholders if not p.args]
        self.constants = {p: p.args[0] for p in placeholders if p.args}
        if len(self.inputs) != 1:
            raise StitchError(
                f"{type(self.model).__name__} takes {len(self.inputs)} required inputs; the "
                "FX cutting path handles single-input models (use a plugin's cut backend)"
            )
        dep: set[fx.Node] = set(self.inputs)
        for n in self.order:
            if any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        self.input_dependent = dep
        self.by_name = {self.names[n]: n for n in self.order}
        self._record()

    def _record(self) -> None:
        """Run on two batch sizes: tensor metadata for every node, values of non-tensors."""
        self.meta: dict[fx.Node, Any] = {}
        self.scalar: dict[fx.Node, tuple[Any, Any]] = {}
        runs = []
        for batch in (2, 3):
            x = _resize_batch(self.example, batch)
            runs.append(_run_recording(self.gm, self.order, x))
        (vals2, meta2), (vals3, meta3) = runs
        self.meta = meta2
        self.meta_other = meta3
        for n in self.order:
            if n in vals2:
                self.scalar[n] = (vals2[n], vals3[n])

    def _replay_value(self, n: fx.Node) -> Any:
        """How the suffix rebuilds shape value ``n``: a constant, _BATCH, a tuple of those, or
        None when it cannot (``n`` is then a genuine second input crossing the cut)."""
        if n not in self.scalar:
            return None
        a, b = self.scalar[n]
        return _replay(a, b)

    def crossing(self, node: fx.Node) -> tuple[list[fx.Node], dict[fx.Node, Any]]:
        """Input-dependent values other than ``node`` still needed after it: (blocking, replay)."""
        i = self.pos[node]
        blocking, replay = [], {}
        for n in self.order[: i + 1]:
            if n is node or n not in self.input_dependent:
                continue
            if any(self.pos.get(u, -1) > i for u in n.users):
                how = self._replay_value(n)
                if how is None:
                    blocking.append(n)
                else:
                    replay[n] = how
        return blocking, replay

    def batch_first(self, node: fx.Node) -> bool:
        """Is ``node`` a tensor whose first dimension is the batch (2 and 3 samples in the
        two recorded runs, every other dimension the same)? Only such a tensor can be cached
        and stitched sample by sample, and the suffix reads the batch size from it."""
        a, b = self.meta.get(node), self.meta_other.get(node)
        if not isinstance(a, TensorMeta) or not isinstance(b, TensorMeta) or not a.shape:
            return False
        return a.shape[0] == 2 and b.shape[0] == 3 and a.shape[1:] == b.shape[1:]

    def valid_cuts(self) -> list[CutPoint]:
        """Every node that is a valid single-tensor cut, in forward order (one sweep)."""
        last_use = {n: max((self.pos.get(u, -1) for u in n.users), default=-1) for n in self.order}
        live: set[fx.Node] = set()
        cuts = []
        for i, n in enumerate(self.order):
            if n in self.input_dependent:
                live.add(n)
            live = {m for m in live if last_use[m] > i}
            if n.op in ("placeholder", "output") or not isinstance(self.meta.get(n), TensorMeta):
                continue
            if n not in self.input_dependent or last_use[n] <= i or not self.batch_first(n):
                continue
            others = live - {n}
            replay = {m: self._replay_value(m) for m in others}
            if any(v is None for v in replay.values()):
                continue
            cuts.append(CutPoint(n, self.names[n], replay))
        return cuts

    def cut_point(self, node: fx.Node) -> CutPoint:
        """The CutPoint for ``node``, or CutError naming the values that cross."""
        name = self.names[node]
        meta = self.meta.get(node)
        if node.op in ("placeholder", "output"):
            raise CutError(f"cannot cut at the model's {node.op} {name!r}")
        if node not in self.input_dependent:
            raise CutError(f"{name!r} does not depend on the input (a constant or parameter)")
        if not isinstance(meta, TensorMeta):
            raise CutError(f"{name!r} is not a tensor (it is {type(meta).__name__})")
        if not self.batch_first(node):
            other = list(getattr(self.meta_other.get(node), "shape", ()))
            raise CutError(
                f"{name!r} does not keep the batch in its first dimension (shape "
                f"{list(meta.shape)} for a batch of 2, {other} for 3), so its "
                "activations cannot be handed over sample by sample"
            )
        blocking, replay = self.crossing(node)
        if blocking:
            details = ", ".join(
                f"{self.names[b]} (used by {self._later_user(b, node)})" for b in blocking
            )
            raise CutError(
                f"cut {name!r} is not a single-tensor cut (e.g. it crosses a skip connection): "
                f"besides {name!r}, these values cross it: {details}"
            )
        return CutPoint(node, name, replay)

    def _later_user(self, value: fx.Node, cut: fx.Node) -> str:
        later = [u for u in value.users if self.pos.get(u, -1) > self.pos[cut]]
        return self.names[later[0]] if later else "?"

    # ------------------------------------------------------------------ building modules
    def prefix(self, cut: CutPoint) -> fx.GraphModule:
        return self.extractor([cut.node])

    def extractor(self, nodes: list[fx.Node]) -> fx.GraphModule:
        """A module computing the given nodes' values from the input: one node → a tensor,
        several → a tuple (one pass yields all of a sender's cuts).

        A requested value that a later op of the same pass modifies in place (resnet's
        ``layer1.0.add`` before its in-place ReLU) is cloned where it is produced, so each
        output is exactly what the prefix for that cut alone would return.
        """
        keep = self._closure(nodes)
        ordered = [n for n in self.order if n in keep]
        g = fx.Graph()
        env: dict[fx.Node, Any] = {}
        for p in self.inputs:
            env[p] = g.placeholder(p.name)
        wanted = set(nodes)
        snapshot: dict[fx.Node, Any] = {}
        for k, n in enumerate(ordered):
            if n in env:
                continue
            env[n] = self.constants[n] if n in self.constants else g.node_copy(n, env.__getitem__)
            if n in wanted and _mutates_input(n, ordered[k + 1 :], self.gm):
                snapshot[n] = g.call_method("clone", (env[n],))
        outs = [snapshot.get(n, env[n]) for n in nodes]
        g.output(outs[0] if len(outs) == 1 else tuple(outs))
        return _module(self.gm, g, "Prefix")

    def _closure(self, targets: list[fx.Node]) -> set[fx.Node]:
        """The nodes needed to compute ``targets``: their ancestors, plus in-place ops before
        the last target that modify one of those values (and what those ops need)."""
        last = max(self.pos[t] for t in targets)
        inplace = [n for n in self.order[: last + 1] if _is_inplace(n, self.gm)]
        keep: set[fx.Node] = set()
        stack = list(targets)
        while True:
            while stack:
                n = stack.pop()
                if n not in keep:
                    keep.add(n)
                    stack.extend(n.all_input_nodes)
            stack = [n for n in inplace if n not in keep and n.args and n.args[0] in keep]
            if not stack:
                return keep

    def verify(self, points: list[CutPoint], x: torch.Tensor, expected: Any) -> dict[fx.Node, bool]:
        """Check ``suffix(prefix(x)) == expected`` for many cuts in one pass over the graph.

        The graph runs once; when a cut's value appears, its suffix runs on a copy of it, the
        output is compared with ``expected`` and the copy with the value (a suffix must never
        modify the activation it is handed). Cost: one forward plus one suffix run per cut,
        instead of a prefix and a suffix per cut.
        """
        wanted = {p.node: p for p in points}
        results: dict[fx.Node, bool] = {}
        graph = self

        class Checker(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                point = wanted.get(n)
                if point is not None:
                    results[n] = graph._suffix_reproduces(point, out, expected)
                return out

        with torch.no_grad():
            Checker(self.gm).run(x)
        return results

    def _suffix_reproduces(self, point: CutPoint, value: Any, expected: Any) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        act = value.clone()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # FX prints failing code
                out = self.suffix(point)(act)
        except Exception:  # a suffix that cannot run at this batch size is not a valid cut
            return False
        return outputs_close(out, expected) and torch.equal(act, value)

    def no_cut_reason(self) -> str:
        """Why no node is a valid cut: the node with the fewest other values crossing it."""
        best: tuple[int, str] | None = None
        for n in self.order:
            if n.op in ("placeholder", "output") or n not in self.input_dependent:
                continue
            if not isinstance(self.meta.get(n), TensorMeta):
                continue
            blocking, _ = self.crossing(n)
            if blocking and (best is None or len(blocking) < best[0]):
                names = ", ".join(self.names[b] for b in blocking[:4])
                best = (len(blocking), f"at {self.names[n]!r} these values cross too: {names}")
        return best[1] if best else "no node carries an input-dependent tensor"

    def suffix(self, cut: CutPoint) -> fx.GraphModule:
        g = fx.Graph()
        act = g.placeholder("act")
        i = self.pos[cut.node]
        later = self.order[i + 1 :]
        entry = act
        if _mutates_input(cut.node, later, self.gm):
            entry = g.call_method("clone", (act,))
        env: dict[fx.Node, Any] = {cut.node: entry}
        for n, how in cut.replay.items():
            env[n] = _emit_replay(g, act, how)

        def get(n: fx.Node) -> Any:
            if n not in env:
                if n in self.constants:
                    env[n] = self.constants[n]
                elif n.op == "placeholder" or (n in self.input_dependent and self.pos[n] <= i):
                    raise CutError(f"internal: {self.names[n]!r} crosses cut {cut.name!r}")
                else:
                    env[n] = g.node_copy(n, get)
            return env[n]

        for n in later:
            if n.op == "output":
                g.output(tree_map_nodes(n.args[0], get))
            else:
                get(n)
        return _module(self.gm, g, "Suffix")


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _resize_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    reps = -(-batch // x.shape[0])
    return torch.cat([x] * reps)[:batch]


def _run_recording(gm: fx.GraphModule, order, x) -> tuple[dict, dict]:
    """Interpret ``gm``; return (non-tensor values, tensor metadata) per node."""
    values: dict[fx.Node, Any] = {}
    meta: dict[fx.Node, Any] = {}
    wanted = set(order)

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                if isinstance(out, torch.Tensor):
                    meta[n] = TensorMeta(tuple(out.shape), out.dtype)
                else:
                    meta[n] = out
                    if not _flat_tensors(out):
                        values[n] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values, meta


def _replay(a: Any, b: Any) -> Any:
    """Compare a value from batch-2 and batch-3 runs (see TracedGraph._replay_value)."""
    if isinstance(a, bool) or a is None or isinstance(a, (str, float, torch.dtype, torch.device)):
        return a if a == b else None
    if isinstance(a, int):
        if a == b:
            return a
        return _BATCH if (a, b) == (2, 3) else None
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        parts = [_replay(x, y) for x, y in zip(a, b)]
        if any(p is None and (x is not None) for p, x in zip(parts, a)):
            return None
        return tuple(parts)
    return None


def _batch_size(act: torch.Tensor) -> int:
    return act.shape[0]


def _as_tuple(*parts):
    return tuple(parts)


def _emit_replay(g: fx.Graph, act: fx.Node, how: Any) -> Any:
    if how is _BATCH:
        return g.call_function(_batch_size, (act,))
    if isinstance(how, tuple):
        if not any(p is _BATCH or isinstance(p, tuple) for p in how):
            return how
        return g.call_function(_as_tuple, tuple(_emit_replay(g, act, p) for p in how))
    return how


def tree_map_nodes(arg: Any, fn: Callable[[fx.Node], Any]) -> Any:
    return fx.node.map_arg(arg, fn)


# ops after which the output may share memory with the input
_VIEW_OPS = {
    "view", "reshape", "flatten", "permute", "transpose", "t", "contiguous", "expand",
    "squeeze", "unsqueeze", "narrow", "chunk", "split", "unbind", "as_strided", "detach",
    "view_as", "expand_as", "unflatten", "movedim", "select", "__getitem__", "getitem",
    "type_as", "to", "float", "identity",
}  # fmt: skip
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _op_name(n: fx.Node) -> str:
    t = n.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t)).split(".")[-1]


def _is_inplace(n: fx.Node, gm: fx.GraphModule) -> bool:
    if n.kwargs.get("inplace") is True:
        return True
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        return bool(getattr(mod, "inplace", False))
    if n.op in ("call_function", "call_method"):
        if n.target in _INPLACE_OPERATORS:
            return True
        name = _op_name(n)
        if name.endswith("_") and not name.endswith("__"):
            return True
        schema = getattr(n.target, "_schema", None)  # aten ops from torch.export
        if schema is not None and any(
            a.alias_info is not None and a.alias_info.is_write for a in schema.arguments
        ):
            return True
    return False


def _mutates_input(cut: fx.Node, later: list[fx.Node], gm: fx.GraphModule) -> bool:
    """Conservatively: could the suffix write into the activation it is handed?"""
    aliases = {cut}
    for n in later:
        if not any(a in aliases for a in n.all_input_nodes):
            continue
        first = n.args[0] if n.args else None
        if _is_inplace(n, gm) and (first in aliases or n.op == "call_module"):
            return True
        if n.op == "call_module":
            mod = gm.get_submodule(str(n.target))
            if not any(True for _ in mod.parameters(recurse=True)):
                aliases.add(n)  # parameter-free modules (Identity, Dropout) may pass x through
        elif _op_name(n) in _VIEW_OPS or n.target is operator.getitem:
            aliases.add(n)
    return False


def _module(root: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    graph.lint()
    gm = fx.GraphModule(root, graph, name)
    gm.eval()
    return gm
