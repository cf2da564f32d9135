"""Saving a trained stitch (its weights only) and rebuilding the stitched model from it.

A saved stitch is a directory with ``stitch.safetensors`` (the stitch's state dict, never the
models) and ``stitch.json`` (how to rebuild: model specs, cuts and their specs, family and its
options, training config, metrics). Rebuilding loads both models by spec, cuts them, builds the
family's module and loads the weights strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from . import plugins
from .cuts import Cutter
from .errors import StitchError
from .fileio import atomic_write, write_json
from .sources import load_model
from .spec import ActivationSpec
from .stitching import StitchedModel

FORMAT = "stitchcore.stitch/1"


def save_stitch(directory: str | Path, result, *, sender: str, receiver: str, data: str | None):
    """Write ``result`` (a StitchResult) for models given by spec strings."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in result.model.stitch.state_dict().items()}
    atomic_write(out / "stitch.safetensors", lambda tmp: save_file(state, str(tmp)))
    record = {
        "format": FORMAT,
        "sender": {"model": sender, **result.sender_cut.to_json()},
        "receiver": {"model": receiver, **result.receiver_cut.to_json()},
        "family": result.family,
        "family_options": result.config.family_options,
        "config": result.config.to_json(),
        "data": data,
        "metrics": result.metrics,
    }
    write_json(out / "stitch.json", record)
    return out


def load_stitched(directory: str | Path) -> tuple[StitchedModel, dict]:
    """Rebuild the stitched model saved in ``directory``; returns (model, record)."""
    directory = Path(directory)
    try:
        record = json.loads((directory / "stitch.json").read_text())
    except FileNotFoundError as exc:
        raise StitchError(f"{directory} holds no saved stitch (stitch.json missing)") from exc
    if record.get("format") != FORMAT:
        raise StitchError(f"{directory}/stitch.json is not a {FORMAT} record")
    sides = {}
    for role in ("sender", "receiver"):
        info = record[role]
        cutter = Cutter(load_model(info["model"]))
        cut = cutter.resolve(info["name"])
        saved = ActivationSpec.from_json(info)
        if cut.spec.shape != saved.shape or cut.spec.layout != saved.layout:
            raise StitchError(
                f"{role} {info['model']} cut {info['name']!r} gives {cut.spec.describe()} "
                f"but the stitch was trained on {saved.describe()}"
            )
        sides[role] = (cutter, cut)
    family = plugins.get_family(record["family"])
    s_cutter, s_cut = sides["sender"]
    r_cutter, r_cut = sides["receiver"]
    module = family.build(s_cut.spec, r_cut.spec, **record.get("family_options", {}))
    load_stitch_weights(module, directory / "stitch.safetensors")
    prefix, _ = s_cutter.split(s_cut)
    _, suffix = r_cutter.split(r_cut)
    model = StitchedModel(prefix, module, suffix)
    model.eval()
    return model, record


def load_stitch_weights(module, path: Path) -> None:
    state = load_file(str(path))
    own = module.state_dict()
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        parts = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs here {tuple(own[k].shape)}" for k in wrong
        ]
        parts += [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise StitchError(f"stitch checkpoint does not fit this pair: {'; '.join(parts)}")
    module.load_state_dict(state)


__all__ = ["FORMAT", "load_stitch_weights", "load_stitched", "save_stitch"]
