"""The cut backend for Hugging Face encoders (transformers 5.x has no FX tracer).

Cuts are the encoder's block boundaries: the stem (``embeddings``: the input of block 0) and the
output of every block (``encoder.layer.N`` in BERT, ``layers.N`` in ViT). At a cut after block
``k-1`` the activation is the hidden state, exactly ``hidden_states[k]`` of HF's
``output_hidden_states`` (before any final norm).

- The prefix runs the model normally and stops as block ``k-1`` returns (see ``surgery.Tap``).
- The suffix runs the model normally on the receiver's own input ``x`` with the first ``k``
  blocks bypassed and the activation injected in their place, so HF itself recomputes the
  attention mask from ``x``'s padding, and the remaining blocks, final norm, pooler and head run
  as in the full model. It is therefore called ``suffix(act, x)`` (``needs_context = True``);
  ``suffix(act)`` alone assumes no padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from stitchcore.plugin import (
    ActivationSpec,
    Cut,
    CutBackend,
    CutError,
    ModelHints,
    UnknownNameError,
    outputs_close,
)

from .blocks import BlockLayout, probe_layout
from .specs import input_spec, main_input, prefix_tokens
from .surgery import Inject, Pass, Slot, Stop, Tap, rewire
from .wrapper import HFModule


def layout_of(wrapper: HFModule, example) -> BlockLayout:
    """The block layout of a wrapped model, probed once and kept on the wrapper."""
    if wrapper._layout is None:
        wrapper._layout = probe_layout(wrapper.model, wrapper, example)
    return wrapper._layout


def hints_for(wrapper: HFModule, spec=None) -> ModelHints:
    """Default cuts, input spec and prefix tokens of a wrapped model (probes it once)."""
    spec = spec or input_spec(wrapper.model)
    example = spec.example(2)
    layout = layout_of(wrapper, example)
    return ModelHints(
        cuts=layout.cut_names(),
        input=spec,
        prefix_tokens=prefix_tokens(wrapper.model, layout.tokens, example),
    )


class HFExtractor(nn.Module):
    """Runs the model up to the deepest requested cut; returns the activation (one cut) or a
    tuple of them (several cuts, one pass)."""

    def __init__(self, caller: HFModule, sink: dict, depths: list[int]) -> None:
        super().__init__()
        self.caller = caller
        self.sink = sink
        self.depths = depths

    def forward(self, x) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.sink.clear()
        try:
            self.caller(x)
        except Stop:
            pass
        else:
            raise CutError("the model finished without reaching the requested cut")
        values = tuple(self.sink[d] for d in self.depths)
        self.sink.clear()
        return values[0] if len(values) == 1 else values


class HFSuffix(nn.Module):
    """The rest of the model from an activation; side inputs come from the receiver's ``x``."""

    needs_context = True

    def __init__(self, caller: HFModule, slot: Slot, pixel_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.caller = caller
        self.slot = slot
        self.pixel_shape = pixel_shape

    def _no_padding_input(self, act: torch.Tensor) -> dict[str, torch.Tensor]:
        """A stand-in input for ``suffix(act)``: only its shape and mask matter (no padding)."""
        batch, device = act.shape[0], act.device
        name = self.caller.input_name
        if self.caller.is_text:
            ids = torch.zeros(act.shape[:2], dtype=torch.long, device=device)
            return {name: ids, "attention_mask": torch.ones_like(ids)}
        return {name: torch.zeros((batch, *self.pixel_shape), device=device, dtype=act.dtype)}

    def forward(self, act: torch.Tensor, x: Any = None) -> Any:
        if x is None:
            x = self._no_padding_input(act)
        self.slot.value = act
        try:
            out = self.caller(x)
        finally:
            self.slot.value = None
        if isinstance(out, torch.Tensor) and out.data_ptr() == act.data_ptr():
            out = out.clone()  # nothing after the cut: never hand back the caller's tensor
        return out


class HFCutBackend(CutBackend):
    """Lists, resolves and splits the block-boundary cuts of a Hugging Face encoder."""

    def __init__(self, wrapper: HFModule, example) -> None:
        self.wrapper = wrapper
        self.hf = wrapper.model
        self.layout = layout_of(wrapper, example)
        self.blocks = self.hf.get_submodule(self.layout.path)
        self.skipped: list[str] = []
        self.pixel_shape = tuple(main_input(example, wrapper.input_name).shape[1:])
        names = self.layout.cut_names()
        with torch.no_grad():
            acts = self.extractor_for(list(range(len(names))))(example)
        prefix = prefix_tokens(self.hf, self.layout.tokens, example)
        self._cuts: dict[str, Cut] = {}
        for depth, (name, act) in enumerate(zip(names, acts)):
            dtype = str(act.dtype).removeprefix("torch.")
            layout = "tokens" if act.dim() == 3 else "other"
            spec = ActivationSpec(tuple(act.shape[1:]), layout, dtype, prefix)
            self._cuts[name] = Cut(name, name, spec, depth)

    # ---------------------------------------------------------------- listing and naming
    def default_cuts(self) -> list[Cut]:
        return list(self._cuts.values())

    def all_cuts(self) -> list[Cut]:
        """Block boundaries are the only places a hidden state alone carries everything."""
        return self.default_cuts()

    def _aliases(self, name: str) -> list[str]:
        """``name`` as given, without the wrapper's ``model.``, or relative to the base model
        (``encoder.layer.2`` for ``bert.encoder.layer.2`` in BertForSequenceClassification)."""
        names = [name]
        if not self.wrapper.raw and name.startswith("model."):
            names.append(name.removeprefix("model."))
        base = getattr(self.hf, "base_model_prefix", "")
        if base and getattr(self.hf, "base_model", self.hf) is not self.hf:
            names += [f"{base}.{n}" for n in list(names)]
        return names

    def resolve(self, name: str) -> Cut:
        for alias in self._aliases(name):
            if alias in self._cuts:
                return self._cuts[alias]
        modules = {n for n, _ in self.hf.named_modules() if n}
        for alias in self._aliases(name):
            if alias in modules:
                raise CutError(
                    f"{name!r} is a module of {type(self.hf).__name__} but not a block boundary; "
                    f"Hugging Face models are cut only at: {', '.join(self._cuts)}"
                )
        raise UnknownNameError("cut", name, self._cuts, hint="`stitch cuts MODEL` lists them")

    # ---------------------------------------------------------------- building modules
    def _caller(self, blocks: list[nn.Module]) -> HFModule:
        return self.wrapper.rebind(rewire(self.hf, self.layout.path, nn.ModuleList(blocks)))

    def extractor_for(self, depths: list[int]) -> HFExtractor:
        """A module returning the hidden states after ``depths`` blocks (0 = the stem)."""
        wanted, deepest = set(depths), max(depths)
        sink: dict = {}
        blocks = list(self.blocks)
        for i in range(len(blocks)):
            start, end = i == 0 and 0 in wanted, i + 1 in wanted
            stop = "after" if i + 1 == deepest else "before" if i == 0 and deepest == 0 else None
            if start or end or stop:
                blocks[i] = Tap(
                    blocks[i],
                    sink,
                    input_key=0 if start else None,
                    output_key=i + 1 if end else None,
                    stop=stop,
                )
        return HFExtractor(self._caller(blocks), sink, list(depths))

    def split(self, cut: Cut) -> tuple[nn.Module, nn.Module]:
        k = cut.index
        slot = Slot()
        blocks: list[nn.Module] = list(self.blocks)
        for i in range(min(k, len(blocks))):
            blocks[i] = Pass(blocks[i], self.layout.tuple_out)
        blocks[0] = Inject(blocks[0], slot)
        suffix = HFSuffix(self._caller(blocks), slot, self.pixel_shape)
        return self.extractor_for([k]), suffix

    def extractor(self, cuts: list[Cut]) -> nn.Module:
        return self.extractor_for([c.index for c in cuts])

    def verify(self, cuts: list[Cut], x, expected) -> dict[str, bool]:
        """Recomposition of every cut with one prefix pass: the extractor yields all the
        activations, then each suffix runs once (about half the work of split-and-run)."""
        if not cuts:
            return {}
        results: dict[str, bool] = {}
        with torch.no_grad():
            acts = self.extractor(cuts)(x)
            acts = acts if isinstance(acts, tuple) else (acts,)
            for cut, act in zip(cuts, acts):
                _, suffix = self.split(cut)
                before = act.clone()
                try:
                    out = suffix(act, x)
                except Exception:  # a suffix that cannot run is a cut that does not recompose
                    results[cut.node] = False
                    continue
                results[cut.node] = outputs_close(out, expected) and torch.equal(act, before)
        return results


def backend_for(wrapper: HFModule, example) -> HFCutBackend:
    """The cut backend for a wrapped model, with a clear error for unusable examples."""
    if not isinstance(example, (torch.Tensor, Mapping)):
        raise CutError(f"example input must be a tensor or a mapping, not {type(example).__name__}")
    return HFCutBackend(wrapper, example)
