"""Where one element of a block loop ends, for models that write their residuals in the loop.

A module path such as ``blocks.3`` names the cut after block 3: normally the last graph node
inside that module (a timm ViT block ends with its own second residual add). A hand-written model
may keep the residual adds in the parent's loop instead::

    for blk in self.blocks:  # nn.ModuleList
        x = x + blk.token_mix(blk.norm1(x))
        x = x + blk.channel_mix(blk.norm2(x))

Then the last node inside ``blocks.3`` is the second MLP's output, which the residual add still
combines with ``x``: not a cut. The boundary between block 3 and block 4 is the end of the loop
iteration, the add after ``blocks.3``. ``iteration_end`` finds it:

- the *span* of element ``k`` of a ``ModuleList``/``Sequential`` is every node after its last
  node and before element ``k+1``'s first that takes a value flowing from element ``k``;
- the last element has no successor; its span is cut to the longest start that repeats the
  previous element's span op for op (same kind and target), so work after the loop (a final
  norm, pooling) is never counted as part of the last iteration; a loop of one element has no
  previous one to compare with, so its end is not extended;
- the iteration ends at the last node of the span that is a valid cut.
"""

from __future__ import annotations

from collections.abc import Container

from torch import fx, nn

from .graph import TracedGraph

__all__ = ["iteration_end", "iteration_span"]


def _inside(graph: TracedGraph, path: str) -> list[int]:
    """Positions (in forward order) of the nodes inside module ``path``, by node name."""
    return [
        i
        for i, n in enumerate(graph.order)
        if graph.names[n] == path or graph.names[n].startswith(path + ".")
    ]


def iteration_span(graph: TracedGraph, path: str, next_path: str | None) -> list[fx.Node]:
    """The nodes after module ``path``'s last node (and before ``next_path``'s first, when
    given) that take a value flowing from inside ``path``, in forward order."""
    inside = _inside(graph, path)
    if not inside:
        return []
    stop = len(graph.order)
    if next_path is not None:
        following = _inside(graph, next_path)
        stop = min(following) if following else stop
    flows = {graph.order[i] for i in inside}
    span = []
    for n in graph.order[inside[-1] + 1 : stop]:
        if n.op == "output":
            break
        if any(a in flows for a in n.all_input_nodes):
            flows.add(n)
            span.append(n)
    return span


def _signature(n: fx.Node) -> tuple[str, object]:
    return n.op, n.target


def iteration_end(
    graph: TracedGraph, model: nn.Module, path: str, valid: Container[fx.Node]
) -> fx.Node | None:
    """The last valid cut of the loop iteration that runs element ``path`` of a
    ``ModuleList``/``Sequential`` (see the module docstring), or None when ``path`` is no such
    element or its iteration has no valid cut after the element's own nodes."""
    container, _, element = path.rpartition(".")
    try:
        parent = model.get_submodule(container) if container else model
    except AttributeError:
        return None
    if not isinstance(parent, (nn.ModuleList, nn.Sequential)):
        return None
    names = [name for name, _ in parent.named_children()]
    if element not in names:
        return None
    k = names.index(element)
    full = [f"{container}.{name}" if container else name for name in names]
    if k + 1 < len(full):
        span = iteration_span(graph, full[k], full[k + 1])
    elif k > 0:
        span = iteration_span(graph, full[k], None)
        previous = iteration_span(graph, full[k - 1], full[k])
        same = 0
        while same < min(len(span), len(previous)) and _signature(span[same]) == _signature(
            previous[same]
        ):
            same += 1
        span = span[:same]
    else:
        return None
    return next((n for n in reversed(span) if n in valid), None)
