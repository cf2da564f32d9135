"""Text through a Hugging Face model: its tokenizer as the model's ``preprocess``, and the pooled
classifier head that ``stitch train`` puts on a bare encoder or decoder.

Tokenizing. A text dataset's inputs are ``list[str]``; every model turns them into its own
input with its own tokenizer (:class:`Tokenize`): special tokens added, truncated to the
model's sequence length ``L`` (its InputSpec's shape) and right-padded to exactly ``L`` with the
*model's* pad id. Fixed length: activations at a cut have one shape, so they can be cached and
token-wise stitches line up. The pad id is the config's ``pad_token_id`` (else the tokenizer's
pad, else its end-of-text token), so :class:`~stitchcore_hf.wrapper.HFModule` derives the
attention mask from the ids alone (``ids != pad``), in the prefix and in the receiver's suffix.

Pooling (:class:`PooledHead`), chosen per model by :func:`pooling_for`:

- ``mean`` for text encoders (BERT, MiniLM): the mean of the last hidden state over the
  non-padding tokens. all-MiniLM-L6-v2 was trained by sentence-transformers with exactly this
  pooling, so its sentence information lives there; its ``[CLS]`` state was never trained as a
  sentence embedding. A mean over *all* positions would mix in the padding, whose share varies
  with the text's length.
- ``last`` for causal decoders (GPT-2 style): the last non-padding token, the only position
  whose causal attention has seen the whole text (what ``GPT2ForSequenceClassification`` reads).
- ``first`` for vision transformers with a class token (ViT, DeiT): the ``[CLS]`` state, as
  ``ViTForImageClassification`` reads it; ``mean`` over all tokens for those without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stitchcore.plugin import OfflineError, StitchError

from .locate import hub_offline

__all__ = ["POOLINGS", "PooledHead", "Tokenize", "is_causal", "load_tokenizer", "pooling_for"]

POOLINGS = ("mean", "last", "first")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: files that hold a tokenizer's vocabulary (transformers 5 builds an *empty* tokenizer from a
#: bare config.json, which would turn every word into [UNK]: refused instead)
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def load_tokenizer(ref: str, label: str, vocab_size: int | None = None):
    """The tokenizer saved with a model (a directory, or a hub id in the cache); a one-line
    error that says how to provide one when there is none, or when it does not fit the model's
    vocabulary (``vocab_size``)."""
    from transformers import AutoTokenizer

    local = Path(ref).is_dir()
    fix = " (save one there: tokenizer.save_pretrained(DIR))"
    if local and not any((Path(ref) / f).is_file() for f in VOCAB_FILES):
        raise StitchError(f"{label}: no tokenizer in {ref}{fix}")
    try:
        tok = AutoTokenizer.from_pretrained(ref, local_files_only=local or hub_offline())
    except (OSError, ValueError, TypeError) as exc:
        where = f"in {ref}" if local else f"for {ref} in the local cache"
        cls = StitchError if local else OfflineError
        raise cls(
            f"{label}: no tokenizer {where}{fix if local else ''}: {_first_line(exc)}"
        ) from exc
    if len(tok) <= len(tok.all_special_tokens):
        raise StitchError(f"{label}: the tokenizer in {ref} has no vocabulary{fix}")
    if vocab_size is not None and len(tok) > vocab_size:
        raise StitchError(
            f"{label}: its tokenizer has {len(tok)} tokens and the model's vocabulary "
            f"{vocab_size}: they do not belong together"
        )
    return tok


class Tokenize:
    """``list[str] -> LongTensor (batch, length)``: the model's tokenizer, truncating to
    ``length`` tokens and right-padding with ``pad_id``. The tokenizer is loaded on first use
    (``stitch cuts`` never needs it)."""

    def __init__(
        self,
        ref: str,
        length: int,
        pad_id: int,
        label: str,
        tokenizer=None,
        vocab_size: int | None = None,
    ) -> None:
        self.ref, self.length, self.pad_id, self.label = ref, int(length), int(pad_id), label
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.ref, self.label, self.vocab_size)
        return self._tokenizer

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise StitchError(f"{self.label}: text input must be a list of strings")
        out = torch.full((len(texts), self.length), self.pad_id, dtype=torch.long)
        if not texts:
            return out
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.length, return_attention_mask=False
        )
        for row, ids in enumerate(enc["input_ids"]):
            out[row, : len(ids)] = torch.as_tensor(ids[: self.length], dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"Tokenize({self.ref!r}, length={self.length}, pad_id={self.pad_id})"


def pad_id_for(config: Any, ref: str | None, label: str) -> tuple[int, Any]:
    """(pad id, tokenizer or None): the config's pad id, else the tokenizer's pad or end-of-text
    token (loaded only then)."""
    pad = getattr(config, "pad_token_id", None)
    if pad is not None:
        return int(pad), None
    if not ref:
        raise StitchError(f"{label}: the config has no pad_token_id and there is no tokenizer")
    tok = load_tokenizer(ref, label, getattr(config, "vocab_size", None))
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate), tok
    raise StitchError(
        f"{label}: neither the config nor the tokenizer has a pad or end-of-text token to pad "
        "with; set pad_token_id in config.json"
    )


def is_causal(model: nn.Module) -> bool:
    """A decoder whose attention is causal (GPT-2 style): its attention modules say so
    (``is_causal``), or its config is a decoder's."""
    if getattr(getattr(model, "config", None), "is_decoder", False):
        return True
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def pooling_for(model: nn.Module, text: bool, prefix_tokens: int) -> str:
    """The pooling a classifier on this model's last hidden state uses (module docstring)."""
    if text:
        return "last" if is_causal(model) else "mean"
    return "first" if prefix_tokens > 0 else "mean"


class PooledHead(nn.Module):
    """Pools a ``(batch, tokens, width)`` hidden state to one vector per sample (``pool``,
    see the module docstring) and classifies it with one ``nn.Linear`` (``linear``)."""

    def __init__(self, pool: str, in_features: int, num_classes: int) -> None:
        super().__init__()
        if pool not in POOLINGS:
            raise StitchError(f"unknown pooling {pool!r}; expected one of {', '.join(POOLINGS)}")
        self.pool = pool
        self.linear = nn.Linear(in_features, num_classes)

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if hidden.dim() != 3:
            raise StitchError(
                f"a pooled head needs (batch, tokens, width), got {tuple(hidden.shape)}"
            )
        if self.pool == "first":
            return hidden[:, 0]
        if mask is None:
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        keep = mask.to(hidden.dtype)
        if self.pool == "mean":
            return (hidden * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        # last: the highest position the mask keeps (right or left padding alike)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (keep * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self.pooled(hidden, mask))

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"
