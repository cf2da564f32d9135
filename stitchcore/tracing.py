"""Tracing a model into an ``fx.GraphModule`` with module-path node names, and the calling
convention of a model's example input.

An example input is one of three things, and it decides how the model is called:

- a tensor: ``model(x)`` (one input);
- a tuple (or list) of tensors: ``model(*inputs)`` (positional inputs);
- a dict of tensors: ``model(**inputs)`` (keyword inputs, keys named as ``forward``'s parameters).

Each tensor is batched (batch first, the same batch size). The *primary* input is the one that
flows through a cut: the tensor itself, the tuple's first element, or the dict's first key (in
insertion order: put the input to cut first). The others are *side inputs* (masks, a second
modality); a suffix that needs them reads them from the receiver's own inputs.

Two tracers: torch.fx first (``trace_fx``: names by module path, tracer policies from plugins,
optional inputs not given by the example traced as constants), then ``torch.export``
(``trace_export``: non-strict, dynamic batch). Both return a :class:`Trace` whose ``keys`` say
which placeholder carries which input (None, a tuple index or a dict key).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .errors import StitchError

__all__ = [
    "InputKey",
    "Trace",
    "TracerPolicy",
    "batch_size",
    "call_model",
    "check_example",
    "flat_tensors",
    "input_keys",
    "input_value",
    "outputs_close",
    "primary_input",
    "resize_batch",
    "resize_tensor_batch",
    "trace_export",
    "trace_fx",
]

InputKey = int | str | None  # None: the example is the input itself


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


# ----------------------------------------------------------------------------- inputs
def input_keys(example: Any) -> list[InputKey]:
    """The keys of an example input's tensors: ``[None]`` for a tensor, ``[0, 1, …]`` for a
    tuple, the dict's keys in order. StitchError for anything else, for non-tensor parts and for
    tensors whose batch sizes differ (every input is resized together)."""
    if isinstance(example, torch.Tensor):
        keys: list[InputKey] = [None]
        parts = [example]
    elif isinstance(example, (tuple, list)):
        keys, parts = list(range(len(example))), list(example)
    elif isinstance(example, Mapping):
        keys, parts = list(example), list(example.values())
    else:
        raise StitchError(
            f"example_input is a {type(example).__name__}; pass a batched tensor, a tuple of "
            "them (positional inputs) or a dict of them (keyword inputs)"
        )
    if not parts:
        raise StitchError("example_input holds no tensor")
    for key, part in zip(keys, parts):
        if not isinstance(part, torch.Tensor) or part.dim() == 0:
            raise StitchError(
                f"example_input[{key!r}] is a {type(part).__name__}, not a batched tensor; "
                "fixed options belong in the model (e.g. functools.partial), not in its inputs"
            )
    sizes = {int(p.shape[0]) for p in parts}
    if len(sizes) > 1:
        shown = ", ".join(f"{k!r}: {p.shape[0]}" for k, p in zip(keys, parts))
        raise StitchError(f"example_input's tensors have different batch sizes ({shown})")
    return keys


def input_value(inputs: Any, key: InputKey) -> Any:
    """The input under ``key`` (the whole input for None)."""
    return inputs if key is None else inputs[key]


def primary_input(inputs: Any) -> torch.Tensor:
    """The input that flows through a cut: the tensor, the tuple's first, the dict's first."""
    return input_value(inputs, input_keys(inputs)[0])


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` the way its example input says: ``model(x)``, ``model(*x)``, ``model(**x)``."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def _forward_params(model: nn.Module) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


_NAMED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def _given_params(model: nn.Module, example: Any) -> dict[str, InputKey] | None:
    """``forward``'s parameter names that the example gives, mapped to their input keys; None
    when the signature cannot be read (then FX decides alone)."""
    params = _forward_params(model)
    if params is None:
        return None
    keys = input_keys(example)
    name = type(model).__name__
    positional = [p for p in params if p.kind in _NAMED[:2]]
    if keys == [None]:
        return {positional[0].name: None} if positional else None
    if isinstance(keys[0], int):
        if len(keys) > len(positional):
            raise StitchError(
                f"{name}.forward takes {len(positional)} positional inputs, example_input gives "
                f"{len(keys)}"
            )
        return {p.name: k for p, k in zip(positional, keys)}
    named = {p.name for p in params if p.kind in _NAMED[1:]}
    unknown = [k for k in keys if k not in named]
    if unknown:
        raise StitchError(
            f"example_input keys {unknown} are not parameters of {name}.forward "
            f"({', '.join(sorted(named)) or 'none'}); a dict example gives keyword inputs"
        )
    return {str(k): k for k in keys}


def _constant_defaults(model: nn.Module, given: dict[str, InputKey] | None) -> dict[str, Any]:
    """Optional inputs the example does not give (``mask=None``, ``is_causal=False``) are traced
    as constants, so ``if mask is not None`` / ``if is_causal`` take the branch the model takes
    when called without them (left as placeholders they would be Proxies). A required input the
    example does not give is a StitchError naming it."""
    params = _forward_params(model)
    if params is None:
        return {}
    if given is None:
        given = {params[0].name: None} if params else {}
    constants = {}
    for p in params:
        if p.name in given or p.kind not in _NAMED:
            continue
        if p.default is inspect.Parameter.empty:
            raise StitchError(
                f"{type(model).__name__}.forward takes input {p.name!r}, which example_input "
                "does not give; pass a tuple (positional inputs) or a dict (keyword inputs)"
            )
        if p.default is None or type(p.default) in (bool, int, float, str):
            constants[p.name] = p.default
    return constants


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) value, in pytree order: how outputs are compared."""
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


def outputs_close(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
    """Same structure of tensors, same dtypes, allclose."""
    fa, fb = flat_tensors(a), flat_tensors(b)
    return len(fa) == len(fb) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.allclose(x, y, atol=atol, rtol=rtol)
        for x, y in zip(fa, fb)
    )


def resize_tensor_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` with ``batch`` samples along its first dimension: its own samples repeated in
    order, then cut (a batch of 2 resized to 3 repeats the first sample)."""
    reps = -(-batch // x.shape[0])
    return torch.cat([x] * reps)[:batch]


def resize_batch(example: Any, batch: int) -> Any:
    """The example with ``batch`` samples (its own samples repeated or cut), every tensor
    in it (a tuple's, a dict's) alike."""
    return tree_map(
        lambda t: resize_tensor_batch(t, batch) if isinstance(t, torch.Tensor) and t.dim() else t,
        example,
    )


def batch_size(example: Any) -> int | None:
    """The batch size of an example input (a tensor, or a mapping/tuple of tensors such as a
    tokenizer's output), or None when it holds no batched tensor."""
    leaves = [t for t in tree_flatten(example)[0] if isinstance(t, torch.Tensor) and t.dim()]
    return leaves[0].shape[0] if leaves else None


def check_example(model: nn.Module, example: Any) -> None:
    """StitchError when ``example`` cannot be ``model``'s input: not tensors, a positional or
    keyword input ``forward`` does not take, or a required input it does not give."""
    _constant_defaults(model, _given_params(model, example))


# ----------------------------------------------------------------------------- tracing
@dataclass
class Trace:
    """A traced model: the graph module, a name per node, and the input key of each input
    placeholder (placeholders not in ``keys`` are constants: their default is their value)."""

    gm: fx.GraphModule
    names: dict[fx.Node, str]
    keys: dict[fx.Node, InputKey]


class _PathTracer(fx.Tracer):
    """FX tracer that names each node by module path, like torchvision's feature extraction:
    ``layer1.0.conv1`` for a module call, ``layer1.0.add`` for an op inside ``layer1.0``, and
    ``layer1.0.relu_1`` when a name repeats."""

    def __init__(self, policy: TracerPolicy) -> None:
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


def trace_fx(model: nn.Module, example: Any, policy: TracerPolicy) -> Trace:
    """Trace ``model`` with torch.fx: placeholders for the inputs ``example`` gives, constants
    for the optional ones it does not."""
    given = _given_params(model, example)
    tracer = _PathTracer(policy)
    graph = tracer.trace(model, concrete_args=_constant_defaults(model, given) or None)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    names = {n: tracer.names.get(n, n.name) for n in gm.graph.nodes}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if given is None:  # no signature: the placeholders without a default, in order
        free = [p for p in placeholders if not p.args]
        keys = dict(zip(free, input_keys(example)))
    else:
        keys = {p: given[str(p.target)] for p in placeholders if str(p.target) in given}
    if len(keys) != len(input_keys(example)):
        raise StitchError(
            f"torch.fx found {len(keys)} of the {len(input_keys(example))} inputs of "
            f"{type(model).__name__} in its graph"
        )
    return Trace(gm, names, keys)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # older torch spells paths like "L['self'].layer1.0" or "L__self___layer1_0"
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    return path


def trace_export(model: nn.Module, example: Any) -> Trace:
    """Trace ``model`` with non-strict ``torch.export``, every input's first dimension one
    dynamic batch size. Node names are the module path plus the op (``block.conv2d``)."""
    from torch.export import Dim, export

    keys = input_keys(example)
    batch = Dim("batch")
    if keys == [None]:
        args, kwargs, dynamic = (example,), {}, ({0: batch},)
    elif isinstance(keys[0], int):
        args, kwargs = tuple(example), {}
        dynamic = tuple({0: batch} for _ in args)
    else:
        args, kwargs = (), dict(example)
        dynamic = {k: {0: batch} for k in kwargs}
    ep = export(model, args, kwargs, strict=False, dynamic_shapes=dynamic)
    gm, leaf_keys = _plain_calling_convention(ep.module(), keys)
    seen: dict[str, int] = {}
    names = {}
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method"):
            op = re.sub(r"_\d+$", "", n.name)
            path = _module_path(n)
            names[n] = _dedupe(f"{path}.{op}" if path else op, seen)
        else:
            names[n] = _dedupe(n.name, seen)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return Trace(gm, names, dict(zip(placeholders, leaf_keys)))


def _plain_calling_convention(
    gm: fx.GraphModule, keys: list[InputKey]
) -> tuple[fx.GraphModule, list[InputKey]]:
    """Make an exported module take its inputs as flat placeholders and return its output like
    the model does; also the input key of each placeholder, in order.

    ``ExportedProgram.module()`` flattens inputs and outputs with pytree code generation; a
    prefix or suffix copied from its graph would return a flat tuple. Here the graph itself
    rebuilds the model's output structure (a single tensor stays a tensor).
    """
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None:
        return gm, keys
    leaf_keys = keys
    if info.in_spec is not None:  # ((args…), {kwargs…}) with each leaf's position
        n = info.in_spec.num_leaves
        args, kwargs = tree_unflatten(list(range(n)), info.in_spec)
        if keys == [None]:
            where: dict[int, InputKey] = {args[0]: None}
        elif isinstance(keys[0], int):
            where = {args[k]: k for k in keys}
        else:
            where = {kwargs[k]: k for k in keys}
        leaf_keys = [where[i] for i in range(n)]
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
    # a fresh module over the same graph: without export's pre-hook that checks calls against
    # the pytree calling convention just replaced (it refuses keyword inputs given by position)
    return fx.GraphModule(gm, graph, type(gm).__name__), leaf_keys
