"""First-party plugin: Hugging Face encoders (``hf:`` source) and their cut backend.

transformers 5.x cannot be traced with torch.fx, so this plugin cuts HF models itself at block
boundaries (``embeddings``, ``encoder.layer.N``, ``layers.N``) through the ``cut_backend`` hook,
for models it loaded (``HFModule``) and for bare ``transformers.PreTrainedModel``s handed to
``stitchcore.list_cuts``/``split``. See docs/huggingface.md.

Text models come with their tokenizer as ``preprocess`` and, when ``stitch train`` gives them a
classifier, a pooled head inside the wrapper (text.py). ``make_local_model`` writes a small
BERT- or GPT-2-style model with MiniLM's tokenizer, for experiments without the hub (local.py).

Importing this plugin does not import transformers (several seconds); that happens on first use.
"""

from __future__ import annotations

import stitchcore
from stitchcore.plugin import ModelHints, StitchError

from .backend import backend_for
from .local import make_local_model
from .source import HFSource, tokenizer_for
from .specs import input_spec
from .text import PooledHead, Tokenize
from .wrapper import HFModule, is_pretrained_model, unwrap


@stitchcore.hookimpl
def register_model_sources(register):
    register(HFSource())


@stitchcore.hookimpl
def model_hints(model):
    """The input spec of an HF model (so list_cuts needs no example); cuts come from the backend."""
    wrapper = unwrap(model)
    if wrapper is None:
        return None
    if wrapper.hints is not None:
        return wrapper.hints
    try:
        return ModelHints(input=input_spec(wrapper.model))
    except StitchError:  # a modality without a default input: the caller passes an example
        return None


@stitchcore.hookimpl
def cut_backend(model, example):
    wrapper = unwrap(model)
    if wrapper is None:
        return None
    return backend_for(wrapper, example)


__all__ = [
    "HFModule",
    "HFSource",
    "PooledHead",
    "Tokenize",
    "is_pretrained_model",
    "make_local_model",
    "tokenizer_for",
    "unwrap",
]
