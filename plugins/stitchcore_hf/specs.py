"""What a Hugging Face encoder eats (InputSpec) and how many prefix tokens its hidden state has.

Text models take ``input_ids`` of shape ``(seq_len,)``; the spec's ``seq_len`` is a default for
examples and datasets (128, capped by ``max_position_embeddings`` minus 2 because RoBERTa-style
models offset positions), not a limit. Vision models take ``pixel_values`` of
``(num_channels, image_size, image_size)`` normalised with the checkpoint's
``image_mean``/``image_std`` (HF rescales to [0, 1] first, as InputSpec assumes).

Prefix tokens: ViT-like models prepend class (and distillation/register) tokens to the patch
tokens; their number is the hidden sequence length minus the number of patches. For text the
spec says 1: the ``[CLS]`` token at position 0 (BERT's pooler and classifier read it). Text
tokens have no patch grid; a stitch that treats them token-wise is unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from stitchcore.plugin import InputSpec, StitchError

from .wrapper import IMAGE_INPUT, TEXT_INPUT

DEFAULT_SEQ_LEN = 128
# RoBERTa-style embeddings start positions at pad_token_id + 1: keep examples clear of the end
POSITION_OFFSET = 2
TEXT_PREFIX_TOKENS = 1


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def input_spec(
    model: nn.Module,
    *,
    tokenizer: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> InputSpec:
    """The InputSpec of an HF PreTrainedModel from its config."""
    cfg = model.config
    name = getattr(model, "main_input_name", TEXT_INPUT)
    if name == TEXT_INPUT:
        max_len = int(getattr(cfg, "max_position_embeddings", 0) or DEFAULT_SEQ_LEN)
        extra = {
            "vocab_size": int(cfg.vocab_size),
            "pad_token_id": getattr(cfg, "pad_token_id", None),
            "max_length": max_len,
        }
        if tokenizer:
            extra["tokenizer"] = tokenizer
        seq_len = min(DEFAULT_SEQ_LEN, max(max_len - POSITION_OFFSET, 1))
        return InputSpec((seq_len,), "int64", "tokens", extra=extra)
    if name == IMAGE_INPUT:
        h, w = _pair(getattr(cfg, "image_size", 224))
        channels = int(getattr(cfg, "num_channels", 3))
        return InputSpec((channels, h, w), "float32", "image", mean=mean, std=std)
    raise StitchError(
        f"{type(model).__name__} takes {name!r}; the hf source supports text (input_ids) and "
        "image (pixel_values) encoders"
    )


def main_input(example, input_name: str) -> torch.Tensor:
    """The main input tensor of an example (a tensor or a mapping of keyword inputs)."""
    return example[input_name] if isinstance(example, Mapping) else example


def prefix_tokens(model: nn.Module, tokens: int, example) -> int:
    """Class/register tokens in front of a hidden state of ``tokens`` tokens."""
    name = getattr(model, "main_input_name", TEXT_INPUT)
    if name == TEXT_INPUT:
        return TEXT_PREFIX_TOKENS if tokens > TEXT_PREFIX_TOKENS else 0
    patch = getattr(model.config, "patch_size", None)
    pixels = main_input(example, name)
    if patch is None or pixels.dim() != 4:
        return 0
    ph, pw = _pair(patch)
    patches = (pixels.shape[-2] // ph) * (pixels.shape[-1] // pw)
    return max(tokens - patches, 0)
