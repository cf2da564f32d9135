"""Where a Hugging Face encoder's blocks are, and what feeds the first one.

transformers 5.x has no FX tracer, but every model declares which module class produces its
hidden states: ``_can_record_outputs["hidden_states"]`` (``BertLayer``, ``ViTLayer`` …). The
block list is the ``nn.ModuleList`` of those modules (``encoder.layer`` in BERT, ``layers`` in
5.x ViT), found by class rather than by a hard-coded path, since paths moved between versions.

The *stem* is the outermost module whose output is exactly the first block's input (BERT's and
ViT's ``embeddings``); it names the cut before block 0. It is found by running the model once
up to block 0 with forward hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stitchcore.plugin import CutError

from .surgery import Stop, hidden_arg


@dataclass(frozen=True)
class BlockLayout:
    """The block list of one model.

    path: module path of the ``ModuleList`` relative to the HF model (``encoder.layer``);
    count: number of blocks; stem: name of the cut before block 0; tuple_out: whether a block
    returns a tuple (older models) rather than a tensor; tokens: sequence length of the hidden
    state on the probe input.
    """

    path: str
    count: int
    stem: str
    tuple_out: bool
    tokens: int

    def block_names(self) -> list[str]:
        return [f"{self.path}.{i}" for i in range(self.count)]

    def cut_names(self) -> list[str]:
        """The stem, then the output of every block, in forward order."""
        return [self.stem, *self.block_names()]


def block_classes(model: nn.Module) -> tuple[set[type], set[str]]:
    """Classes (and class names) that ``_can_record_outputs["hidden_states"]`` declares."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("hidden_states")
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    classes: set[type] = set()
    names: set[str] = set()
    for s in specs:
        if isinstance(s, type):
            classes.add(s)
        elif s is not None:  # an OutputRecorder
            if isinstance(getattr(s, "target_class", None), type):
                classes.add(s.target_class)
            if getattr(s, "class_name", None):
                names.add(s.class_name)
    return classes, names


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, ModuleList)`` of the model's blocks; CutError when there is none."""
    classes, names = block_classes(model)

    def declared(m: nn.Module) -> bool:
        return isinstance(m, tuple(classes)) or any(type(m).__name__.endswith(n) for n in names)

    lists = [
        (path, mod)
        for path, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0
    ]
    found = [(p, m) for p, m in lists if (classes or names) and all(map(declared, m))]
    if not found:  # no declaration: the longest list of identical blocks
        found = [(p, m) for p, m in lists if len(m) >= 2 and len({type(c) for c in m}) == 1]
    if not found:
        raise CutError(
            f"cannot find the block list of {type(model).__name__}: no ModuleList of the classes "
            "its _can_record_outputs['hidden_states'] declares"
        )
    return max(found, key=lambda pm: (len(pm[1]), -pm[0].count(".")))


def same_tensor(a: object, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a view of exactly the same memory, shape and strides."""
    return (
        isinstance(a, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.data_ptr() == b.data_ptr()
        and a.stride() == b.stride()
    )


def probe_layout(model: nn.Module, call, example) -> BlockLayout:
    """Find the blocks, then run ``call(example)`` up to block 0 to find the stem.

    ``call`` runs the HF model (an HFModule). Hooks live only for this one pass.
    """
    path, blocks = find_block_list(model)
    first = blocks[0]
    outputs: list[tuple[str, object]] = []
    seen: dict[str, object] = {}
    handles = []

    def record(name):
        def hook(mod, args, out):
            outputs.append((name, out))

        return hook

    def before_first(mod, args, kwargs):
        seen["input"] = hidden_arg(args, kwargs)

    def after_first(mod, args, kwargs, out):
        seen["output"] = out
        raise Stop

    try:
        for name, mod in model.named_modules():
            if name and name != path and not name.startswith(path + "."):
                handles.append(mod.register_forward_hook(record(name)))
        handles.append(first.register_forward_pre_hook(before_first, with_kwargs=True))
        handles.append(first.register_forward_hook(after_first, with_kwargs=True))
        try:
            with torch.no_grad():
                call(example)
        except Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    if "output" not in seen:
        raise CutError(f"{type(model).__name__} never ran its first block {path}.0")
    hidden = seen["input"]
    stems = [name for name, out in outputs if same_tensor(out, hidden)]
    stem = min(stems, key=lambda n: n.count(".")) if stems else f"{path}.input"
    return BlockLayout(
        path=path,
        count=len(blocks),
        stem=stem,
        tuple_out=isinstance(seen["output"], (tuple, list)),
        tokens=int(hidden.shape[1]) if hidden.dim() >= 2 else 0,
    )
