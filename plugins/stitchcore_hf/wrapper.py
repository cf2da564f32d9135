"""``HFModule``: a Hugging Face model behind a one-tensor-in, one-tensor-out ``forward``.

The rest of stitchcore expects ``module(x) -> tensor``. Hugging Face models take keyword inputs
and return ``ModelOutput`` dicts, so the ``hf:`` source wraps them:

- ``x`` is the main input tensor (``input_ids`` for text, ``pixel_values`` for images) or a
  mapping of keyword inputs (a tokenizer's ``BatchEncoding``, ``{"input_ids": …,
  "attention_mask": …}``) handed to the model as they are.
- For a plain tensor of token ids the attention mask is derived from padding:
  ``attention_mask = input_ids != pad_token_id``. A dataset of padded id tensors therefore needs
  no side channel for masks. Pass a mapping to override it (e.g. when the pad id is a real token).
- The output is ``logits`` when the model has a head (``*ForSequenceClassification``,
  ``*ForImageClassification``), else ``last_hidden_state`` (after the final norm, as HF
  returns it).
- A classifier for a new task (``stitch train``) follows timm's convention, which the core's
  ``attach_head`` uses: ``reset_classifier(n)`` replaces the model's own classifier layer when it
  has one, else puts a :class:`~stitchcore_hf.text.PooledHead` after the last hidden state
  (pooled as documented in text.py, with the attention mask of the same call); and
  ``get_classifier()`` returns that ``nn.Linear``. The head lives inside the wrapper, so the
  cut backend's suffixes end in it and the trained model cuts like the bare one.

``raw=True`` is used for a bare ``PreTrainedModel`` handed to ``stitchcore.list_cuts``: inputs
are passed unchanged and the model's own output object is returned, so that cutting it
reproduces exactly what the user's model returns.

This module imports torch only: the hooks check ``isinstance(m, HFModule)`` without paying for
the ``transformers`` import.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from stitchcore.plugin import StitchError

from .text import PooledHead, pooling_for

TEXT_INPUT = "input_ids"
IMAGE_INPUT = "pixel_values"


def is_pretrained_model(module: Any) -> bool:
    """True for a ``transformers.PreTrainedModel`` (without importing transformers)."""
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(module, tf.PreTrainedModel)


class HFModule(nn.Module):
    """Thin wrapper: ``forward(x)`` returns one tensor (see the module docstring for ``x``)."""

    def __init__(self, model: nn.Module, *, raw: bool = False) -> None:
        super().__init__()
        self.model = model
        self.raw = raw
        self.input_name: str = getattr(model, "main_input_name", TEXT_INPUT)
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_token_id: int | None = pad if self.input_name == TEXT_INPUT else None
        self._use_cache = "use_cache" in inspect.signature(model.forward).parameters
        self._layout = None  # blocks.BlockLayout, found on first cut (see blocks.layout_of)
        self.hints = None  # stitchcore.ModelHints, set by the source
        self.head: PooledHead | None = None  # a classifier added by reset_classifier

    @property
    def is_text(self) -> bool:
        return self.input_name == TEXT_INPUT

    def rebind(self, model: nn.Module) -> HFModule:
        """The same calling convention around another (rewired) copy of the model."""
        other = HFModule(model, raw=self.raw)
        other.input_name, other.pad_token_id = self.input_name, self.pad_token_id
        other.head = self.head  # shared: a suffix ends in the same classifier
        return other

    # ------------------------------------------------------------------ classifier (timm style)
    def _own_classifier(self) -> tuple[nn.Module, str, nn.Linear] | None:
        """(parent, attribute, layer) of the HF model's own classification layer: the last
        ``nn.Linear`` with ``num_labels`` outputs of a ``*For*Classification`` model."""
        arch = type(self.model).__name__
        if not arch.endswith(("ForSequenceClassification", "ForImageClassification")):
            return None
        labels = getattr(self.model.config, "num_labels", None)
        hits = [
            (n, m)
            for n, m in self.model.named_modules()
            if isinstance(m, nn.Linear) and m.out_features == labels
        ]
        if not hits:
            return None
        path, layer = hits[-1]
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        return parent, attr, layer

    def get_classifier(self) -> nn.Module:
        """The classification layer: the added head's linear, the model's own, or Identity."""
        if self.head is not None:
            return self.head.linear
        own = self._own_classifier()
        return own[2] if own else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` classes (0: none, the hidden state out)."""
        if self.raw:
            raise StitchError("a raw Hugging Face model keeps its own outputs; load it with hf:")
        own = self._own_classifier()
        if own is not None:
            parent, attr, old = own
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
            setattr(parent, attr, new if num_classes else nn.Identity())
            self.model.config.num_labels = num_classes
            return
        if num_classes == 0:
            self.head = None
            return
        width = getattr(self.model.config, "hidden_size", None) or getattr(
            self.model.config, "n_embd", None
        )
        if not width:
            raise StitchError(f"{type(self.model).__name__}: no hidden size in its config")
        prefix = self.hints.prefix_tokens if self.hints is not None else 0
        pool = pooling_for(self.model, self.is_text, prefix)
        self.head = PooledHead(pool, int(width), num_classes)

    def arguments(self, x: torch.Tensor | Mapping) -> dict[str, Any]:
        """Keyword arguments for the HF model's forward."""
        if isinstance(x, Mapping):
            kwargs = dict(x)
            if self.input_name not in kwargs:
                raise StitchError(
                    f"input mapping has keys {sorted(kwargs)}; it needs {self.input_name!r}"
                )
        elif isinstance(x, torch.Tensor):
            kwargs = {self.input_name: x}
            if not self.raw and self.pad_token_id is not None and not x.is_floating_point():
                kwargs["attention_mask"] = (x != self.pad_token_id).long()
        else:
            raise StitchError(
                f"{type(self.model).__name__} takes a tensor of {self.input_name} or a mapping "
                f"of keyword inputs, not {type(x).__name__}"
            )
        if not self.raw and self._use_cache:
            kwargs.setdefault("use_cache", False)
        return kwargs

    def select(self, out: Any) -> Any:
        """The one tensor this wrapper returns from the HF output (everything when raw)."""
        if self.raw:
            return out
        if isinstance(out, Mapping):
            for key in ("logits", "last_hidden_state"):
                if out.get(key) is not None:
                    return out[key]
            raise StitchError(
                f"{type(self.model).__name__} returned neither logits nor hidden states"
            )
        if isinstance(out, (tuple, list)):
            return out[0]
        return out

    def forward(self, x: torch.Tensor | Mapping) -> Any:
        kwargs = self.arguments(x)
        out = self.select(self.model(**kwargs))
        if self.head is None:
            return out
        return self.head(out, kwargs.get("attention_mask"))


def unwrap(module: nn.Module) -> HFModule | None:
    """The HFModule for ``module``: itself, a raw wrapper around a PreTrainedModel, or None."""
    if isinstance(module, HFModule):
        return module
    if is_pretrained_model(module):
        return HFModule(module, raw=True)
    return None
