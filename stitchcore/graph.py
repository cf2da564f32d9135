"""Tracing a model into a graph and cutting that graph into prefix and suffix.

torch.fx first (with module-path node names and the tracer policies plugins contribute), then
``torch.export`` (non-strict, dynamic batch) when FX fails or disagrees with eager; see
tracing.py. Both give an ``fx.GraphModule`` and a name for every node, so one cutting routine
serves both.

A node is a *valid cut* when, right after it, the only value carrying data from the *primary*
input still needed later is the node's own tensor. Values that only depend on the input's
*shape* may also cross: each is replayed in the suffix, either as a constant (same value for two
batch sizes) or from the activation's batch size, and what is computed from them alone (a mask
of the input's size) is recomputed there; anything else crossing (a skip connection) makes the
cut invalid. Values computed from *side* inputs (a mask, a second modality: every input of a
tuple or dict example but the first) do not cross either: the suffix recomputes them from the
receiver's own inputs, and is then called ``suffix(act, inputs)`` (``needs_context = True``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .errors import CutError, StitchError
from .tracing import (
    TracerPolicy,
    batch_size,
    call_model,
    check_example,
    flat_tensors,
    input_keys,
    input_value,
    outputs_close,
    resize_batch,
    resize_tensor_batch,
    trace_export,
    trace_fx,
)

__all__ = [
    "BACKENDS",
    "CutPoint",
    "TensorMeta",
    "TracedGraph",
    "TracerPolicy",
    "batch_size",
    "flat_tensors",
    "outputs_close",
    "resize_batch",
    "resize_tensor_batch",
    "tree_map_nodes",
]


_flat_tensors = flat_tensors  # the old private name, kept until every caller uses the new one


@dataclass
class CutPoint:
    """A node of the traced graph that is a valid cut (found by ``valid_cuts``/``cut_point``)."""

    node: fx.Node
    name: str  # the node's qualified name


_BATCH = object()  # marker: "this value is the batch size"

# Tracers tried in order. benchmarks/cut_survey.py --backend export sets ("export",) to measure
# the fallback on models FX could trace.
BACKENDS: tuple[str, ...] = ("fx", "export")


class TracedGraph:
    """A model traced once, analysed for cuts, and cut as often as needed.

    ``example`` is a batched input (batch size ≥ 2): a tensor, a tuple of tensors (positional
    inputs) or a dict of them (keyword inputs); see tracing.py. Raises StitchError when the
    example does not fit the model or neither FX nor torch.export can trace it faithfully.

    Calling conventions of what it builds: a prefix or extractor takes the whole input as one
    argument (``prefix(x)``, ``prefix((a, b))``, ``prefix({"x": …, "mask": …})``); a suffix
    takes the activation, plus that whole input when it reads side inputs
    (``needs_context = True``: ``suffix(act, inputs)``).
    """

    def __init__(self, model: nn.Module, example: Any, policy: TracerPolicy) -> None:
        self.model = copy.deepcopy(model).eval()  # tracing can poison module caches
        self.example = example
        self.multi = input_keys(example) != [None]  # validates the example's structure
        check_example(self.model, example)
        label = type(model).__name__
        try:
            with torch.no_grad():
                expected = call_model(self.model, example)
        except Exception as exc:  # the user's example does not fit the user's model
            raise StitchError(
                f"{label} fails on example_input: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        errors = []
        self.backend = ""
        for backend in BACKENDS:
            try:
                traced = copy.deepcopy(self.model)
                if backend == "fx":
                    trace = trace_fx(traced, example, policy)
                else:
                    trace = trace_export(traced, example)
                self.gm, self.names, self.input_keys = trace.gm, trace.names, trace.keys
                # a failing GraphModule prints its generated code to stderr before raising
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    got = self.call(example)
                if not outputs_close(got, expected):
                    raise StitchError("traced graph's output differs from the model's")
                self.backend = backend
                break
            except Exception as exc:  # any tracer failure means: try the next backend
                errors.append(f"{backend}: {type(exc).__name__}: {_first_line(exc)}")
        if not self.backend:
            raise StitchError(
                f"cannot trace {label} with torch.fx or torch.export ({'; '.join(errors)})"
            )
        self.trace_errors = errors
        self.expected = expected
        self._analyse()

    def graph_args(self, inputs: Any) -> list[Any]:
        """The graph module's positional arguments for ``inputs``: each input placeholder's
        part of the input, each constant placeholder's default."""
        args = []
        for p in self.gm.graph.find_nodes(op="placeholder"):
            if p in self.input_keys:
                args.append(input_value(inputs, self.input_keys[p]))
            elif p.args:
                args.append(p.args[0])
            else:
                raise StitchError(f"internal: graph input {p.name!r} has no value")
        return args

    def call(self, inputs: Any) -> Any:
        """The traced graph's output on ``inputs`` (given as the model's example is)."""
        return self.gm(*self.graph_args(inputs))

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
        # placeholders the example does not give (attn_mask=None, …) are constants
        self.inputs = [p for p in placeholders if p in self.input_keys]
        self.constants = {p: p.args[0] for p in placeholders if p not in self.input_keys}
        first = input_keys(self.example)[0]
        self.primary = next(p for p in self.inputs if self.input_keys[p] == first)
        self.input_dependent = self._reachable(self.inputs)
        self.primary_dependent = self._reachable([self.primary])
        self.by_name = {self.names[n]: n for n in self.order}
        self._record()
        self.carried = self._carried()

    def _reachable(self, sources: list[fx.Node]) -> set[fx.Node]:
        dep: set[fx.Node] = set(sources)
        for n in self.order:
            if any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        return dep

    def _carried(self) -> set[fx.Node]:
        """The values that carry data from the primary input: what a cut must hand over.

        Dependence passes through every node except a replayable shape value (``x.shape``,
        ``B``): what is computed from those, side inputs and constants alone (a mask of the
        input's size) a suffix recomputes. A value that an in-place op carrying data writes into
        carries data too.
        """
        carried = {self.primary}
        for n in self.order:
            if n in carried or not any(a in carried for a in n.all_input_nodes):
                continue
            if self._replay_value(n) is None:
                carried.add(n)
                if _is_inplace(n, self.gm) and n.args and isinstance(n.args[0], fx.Node):
                    carried.add(n.args[0])
        return carried

    def _record(self) -> None:
        """Run on two batch sizes: tensor metadata for every node, values of non-tensors."""
        self.meta: dict[fx.Node, Any] = {}
        self.scalar: dict[fx.Node, tuple[Any, Any]] = {}
        runs = []
        for batch in (2, 3):
            args = self.graph_args(resize_batch(self.example, batch))
            runs.append(_run_recording(self.gm, self.order, args))
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

    def crossing(self, node: fx.Node) -> list[fx.Node]:
        """Values carrying data from the primary input, other than ``node``, still needed
        after it: what blocks a cut there."""
        i = self.pos[node]
        return [
            n
            for n in self.order[: i + 1]
            if n is not node and n in self.carried and any(self.pos.get(u, -1) > i for u in n.users)
        ]

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
            if n in self.carried:
                live.add(n)
            live = {m for m in live if last_use[m] > i}
            if n.op in ("placeholder", "output") or not isinstance(self.meta.get(n), TensorMeta):
                continue
            if n not in self.carried or last_use[n] <= i or not self.batch_first(n):
                continue
            if not live - {n}:
                cuts.append(CutPoint(n, self.names[n]))
        return cuts

    def cut_point(self, node: fx.Node) -> CutPoint:
        """The CutPoint for ``node``, or CutError naming the values that cross."""
        name = self.names[node]
        meta = self.meta.get(node)
        if node.op in ("placeholder", "output"):
            raise CutError(f"cannot cut at the model's {node.op} {name!r}")
        if node not in self.input_dependent:
            raise CutError(f"{name!r} does not depend on the input (a constant or parameter)")
        if node not in self.primary_dependent:
            raise CutError(
                f"{name!r} depends only on side inputs, not on the primary input "
                f"{self.names[self.primary]!r}: a suffix recomputes it from its own inputs"
            )
        if node not in self.carried:
            raise CutError(
                f"{name!r} depends on the input's shape only, not on its values (a suffix "
                "recomputes it)"
            )
        if not isinstance(meta, TensorMeta):
            raise CutError(f"{name!r} is not a tensor (it is {type(meta).__name__})")
        if not self.batch_first(node):
            other = list(getattr(self.meta_other.get(node), "shape", ()))
            raise CutError(
                f"{name!r} does not keep the batch in its first dimension (shape "
                f"{list(meta.shape)} for a batch of 2, {other} for 3), so its "
                "activations cannot be handed over sample by sample"
            )
        blocking = self.crossing(node)
        if blocking:
            details = ", ".join(
                f"{self.names[b]} (used by {self._later_user(b, node)})" for b in blocking
            )
            raise CutError(
                f"cut {name!r} is not a single-tensor cut (e.g. it crosses a skip connection): "
                f"besides {name!r}, these values cross it: {details}"
            )
        return CutPoint(node, name)

    def _later_user(self, value: fx.Node, cut: fx.Node) -> str:
        later = [u for u in value.users if self.pos.get(u, -1) > self.pos[cut]]
        return self.names[later[0]] if later else "?"

    # ------------------------------------------------------------------ building modules
    def prefix(self, cut: CutPoint) -> fx.GraphModule:
        return self.extractor([cut.node])

    def extractor(self, nodes: list[fx.Node]) -> fx.GraphModule:
        """A module computing the given nodes' values from the input: one node → a tensor,
        several → a tuple (one pass yields all of a sender's cuts). It takes the whole input
        as one argument, as the model's example is given.

        A requested value that a later op of the same pass modifies in place (resnet's
        ``layer1.0.add`` before its in-place ReLU) is cloned where it is produced, so each
        output is exactly what the prefix for that cut alone would return.
        """
        keep = self._closure(nodes)
        ordered = [n for n in self.order if n in keep]
        g = fx.Graph()
        env: dict[fx.Node, Any] = {}
        if self.multi:
            whole = g.placeholder("inputs")
            for p in self.inputs:
                if p in keep:
                    env[p] = g.call_function(operator.getitem, (whole, self.input_keys[p]))
        else:
            env[self.primary] = g.placeholder(self.primary.name)
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

    def verify(self, points: list[CutPoint], x: Any, expected: Any) -> dict[fx.Node, bool]:
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
                    results[n] = graph._suffix_reproduces(point, out, expected, x)
                return out

        with torch.no_grad():
            Checker(self.gm).run(*self.graph_args(x))
        return results

    def _suffix_reproduces(self, point: CutPoint, value: Any, expected: Any, x: Any) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        act = value.clone()
        try:
            suffix = self.suffix(point)
            with contextlib.redirect_stderr(io.StringIO()):  # FX prints failing code
                out = suffix(act, x) if getattr(suffix, "needs_context", False) else suffix(act)
        except Exception:  # a suffix that cannot run at this batch size is not a valid cut
            return False
        return outputs_close(out, expected) and torch.equal(act, value)

    def no_cut_reason(self) -> str:
        """Why no node is a valid cut: the node with the fewest other values crossing it."""
        best: tuple[int, str] | None = None
        for n in self.order:
            if n.op in ("placeholder", "output") or n not in self.carried:
                continue
            if not isinstance(self.meta.get(n), TensorMeta):
                continue
            blocking = self.crossing(n)
            if blocking and (best is None or len(blocking) < best[0]):
                names = ", ".join(self.names[b] for b in blocking[:4])
                best = (len(blocking), f"at {self.names[n]!r} these values cross too: {names}")
        return best[1] if best else "no node carries an input-dependent tensor"

    def suffix(self, cut: CutPoint) -> fx.GraphModule:
        """The rest of the model after ``cut``: ``suffix(act)``, or ``suffix(act, inputs)``
        (``needs_context``) when it reads side inputs, which it takes from ``inputs``."""
        g = fx.Graph()
        act = g.placeholder("act")
        whole = g.placeholder("inputs") if self.multi else None
        i = self.pos[cut.node]
        later = self.order[i + 1 :]
        entry = act
        if _mutates_input(cut.node, later, self.gm):
            entry = g.call_method("clone", (act,))
        env: dict[fx.Node, Any] = {cut.node: entry}

        def get(n: fx.Node) -> Any:
            if n not in env:
                before = self.pos[n] <= i
                how = self._replay_value(n) if before and n in self.primary_dependent else None
                if n in self.constants:
                    env[n] = self.constants[n]
                elif n in self.input_keys and n is not self.primary:  # a side input
                    env[n] = g.call_function(operator.getitem, (whole, self.input_keys[n]))
                elif n.op == "placeholder" or (before and n in self.carried):
                    raise CutError(f"internal: {self.names[n]!r} crosses cut {cut.name!r}")
                elif how is not None:  # a shape value: a constant, or the act's batch size
                    env[n] = _emit_replay(g, act, how)
                else:  # computed after the cut, or from shape values and side inputs alone
                    env[n] = g.node_copy(n, get)
            return env[n]

        for n in later:
            if n.op == "output":
                g.output(tree_map_nodes(n.args[0], get))
            else:
                get(n)
        context = whole is not None and bool(whole.users)
        if whole is not None and not context:
            g.erase_node(whole)
        return _module(self.gm, g, "Suffix", needs_context=context)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _run_recording(gm: fx.GraphModule, order, args: list) -> tuple[dict, dict]:
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
                    if not flat_tensors(out):
                        values[n] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*args)
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
    """``fn`` applied to every node inside a (nested) node argument, e.g. an output tuple."""
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


class _ContextSuffix(fx.GraphModule):
    """A suffix that reads side inputs: called ``suffix(act, inputs)`` (see cuts.run_suffix).
    A class attribute, so that copies of the module (deepcopy) keep it."""

    needs_context = True


def _module(
    root: fx.GraphModule, graph: fx.Graph, name: str, needs_context: bool = False
) -> fx.GraphModule:
    graph.lint()
    gm = (_ContextSuffix if needs_context else fx.GraphModule)(root, graph, name)
    gm.eval()
    return gm
