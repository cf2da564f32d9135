"""Rewiring a Hugging Face model's block list without touching the model.

A prefix or suffix is the *same* HF model called normally (so HF builds attention masks,
position ids and the final norm itself) on a shallow copy whose block list has some entries
swapped for the small modules below:

- ``Tap`` wraps a block, records its input or output, and may stop the pass (prefixes,
  extractors);
- ``Inject`` replaces the hidden state arriving at the first block with the activation handed to
  the suffix; ``Pass`` stands in for the blocks the prefix already ran.

``rewire`` copies only the modules on the path to the block list; every other module and every
parameter is shared, so a prefix or suffix costs no memory and the original keeps working.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class Stop(BaseException):
    """Ends a forward pass early. A BaseException so that no ``except Exception`` swallows it."""


def hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden state handed to a block: its first positional argument or ``hidden_states``."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def first(out: Any) -> Any:
    """The hidden state in a block's output (older blocks return tuples)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def rewire(root: nn.Module, path: str, replacement: nn.Module) -> nn.Module:
    """A copy of ``root`` whose submodule at ``path`` is ``replacement``; ``root`` is untouched.

    Only the modules along ``path`` are copied, shallowly, each with its own child table.
    """
    head, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    child = root._modules[head]
    clone._modules[head] = rewire(child, rest, replacement) if rest else replacement
    return clone


class StandIn(nn.Module):
    """Takes a block's place in the block list. Attributes it lacks are read from the block
    (models read e.g. ``layer.attention_type`` or ``stage.downsample`` while looping)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(super().__getattr__("inner"), name)


class Tap(StandIn):
    """Wraps one block: records its input under ``input_key`` and/or its output under
    ``output_key`` in ``sink``, then stops the pass ``before`` or ``after`` it if asked."""

    def __init__(
        self,
        inner: nn.Module,
        sink: dict,
        *,
        input_key: Any = None,
        output_key: Any = None,
        stop: str | None = None,
    ) -> None:
        super().__init__(inner)
        self.sink = sink
        self.input_key, self.output_key, self.stop = input_key, output_key, stop

    def forward(self, *args, **kwargs):
        if self.input_key is not None:
            self.sink[self.input_key] = hidden_arg(args, kwargs)
        if self.stop == "before":
            raise Stop
        out = self.inner(*args, **kwargs)
        if self.output_key is not None:
            self.sink[self.output_key] = first(out)
        if self.stop == "after":
            raise Stop
        return out


class Slot:
    """Holds the activation a suffix is currently running from (plain object, not a module)."""

    value: torch.Tensor | None = None


class Inject(StandIn):
    """Replaces the hidden state arriving at this position with ``slot.value``, then runs
    ``inner`` (the first block when the suffix starts at the stem, else a Pass)."""

    def __init__(self, inner: nn.Module, slot: Slot) -> None:
        super().__init__(inner)
        self.slot = slot

    def forward(self, *args, **kwargs):
        if self.slot.value is None:
            raise RuntimeError("Inject called outside a suffix call")
        args, kwargs = with_hidden(args, kwargs, self.slot.value)
        return self.inner(*args, **kwargs)


class Pass(StandIn):
    """Stands in for a block the prefix already ran (``inner``, never called): returns the
    hidden state unchanged, in the block's output structure."""

    def __init__(self, inner: nn.Module, tuple_out: bool = False) -> None:
        super().__init__(inner)
        self.tuple_out = tuple_out

    def forward(self, *args, **kwargs):
        hidden = hidden_arg(args, kwargs)
        return (hidden,) if self.tuple_out else hidden
