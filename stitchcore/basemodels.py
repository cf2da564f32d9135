"""The base models of a matrix: loaded as asked, or trained first when they must be.

A spec with explicit weights (``@random``, ``@PATH``, ``zoo:…``) is used as it is, and so is a
user's own module. A spec without ``@`` means "the pretrained model": when its weights are not
available here (offline, not cached) or its classifier does not fit the dataset, the model is
trained on the dataset with ``stitch train``'s machinery, cached in the zoo, and the user is told
so on stderr. An unknown model name is an error before anything is trained.

Base models trained here see exactly the training split the stitches see (the same
``--train-size`` subset and data seed); the zoo record of each, in matrix.json's ``models``, says
which data that was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .datasets import DataSplits
from .errors import StitchError, UnknownNameError
from .matrix import Models
from .sources import LoadedModel, load_model, parse_spec
from .userdata import describe_model
from .zoo import ensure_trained

__all__ = ["at_size", "base_model", "prepare_models"]


def base_model(
    spec: Any,
    data: str,
    splits: DataSplits,
    seed: int,
    epochs: int,
    log: Callable[[str], None],
    *,
    input_size: int | None = None,
    train_size: int | None = None,
    data_seed: int = 0,
) -> tuple[Any, dict]:
    """The model for ``spec`` (loaded or trained) and what matrix.json records about it."""
    if not isinstance(spec, str):
        loaded = spec
        info = {"spec": describe_model(spec), "loaded_as": "module", "trained": None}
        inp = getattr(getattr(spec, "input", None), "to_json", None)
        return loaded, {**info, "input": inp() if inp else None,
                        "num_classes": getattr(spec, "num_classes", None)}  # fmt: skip
    parsed = parse_spec(spec)
    record = None
    if parsed.weights is not None or parsed.source == "zoo":
        loaded = load_model(spec)
    else:
        try:
            loaded = load_model(spec)
            needs_training = loaded.num_classes != splits.num_classes
            why = f"its classifier has {loaded.num_classes} outputs, {data} has {splits.num_classes} classes"
        except UnknownNameError:
            raise
        except StitchError as exc:  # offline and not cached, or no pretrained weights at all
            # the cause without the model's name or the source's advice (training is the answer)
            needs_training, why = True, str(exc).removeprefix(f"{spec}: ").split("; ")[0]
            to_train = f"{spec}@random"
        else:  # pretrained weights with a classifier for another task: fine-tune them
            to_train = f"{spec}@pretrained"
        if needs_training:
            if not isinstance(data, str):
                raise StitchError(f"{spec}: {why}; give trained weights (@PATH) for your own data")
            log(f"{spec}: {why}; training it on {data} (seed {seed}, {epochs} epochs, in the zoo)")
            loaded, record = ensure_trained(
                to_train, data, seed=seed, epochs=epochs, head="finetune", log=log,
                input_size=input_size, train_size=train_size,
                data_seed=data_seed if train_size else 0,
            )  # fmt: skip
    if input_size is not None and record is None:
        loaded = at_size(loaded, input_size)
    info = {
        "spec": spec,
        "loaded_as": loaded.spec,
        "trained": record,
        "input": loaded.input.to_json(),
        "num_classes": loaded.num_classes,
    }
    if record is not None:
        info["data_seen"] = record.get("data")
    return loaded, info


def at_size(loaded: LoadedModel, size: int) -> LoadedModel:
    """A loaded image model run at ``size`` px instead of its own input size."""
    from dataclasses import replace

    spec = loaded.input
    if spec.kind != "image":
        raise StitchError(f"--input-size applies to image models; {loaded.spec} takes {spec.kind}")
    new = replace(spec, shape=(spec.shape[0], size, size))
    hints = replace(loaded.hints, input=new)
    return replace(loaded, input=new, hints=hints)


def prepare_models(
    sender: Any,
    receiver: Any,
    data: str,
    splits: DataSplits,
    epochs: int,
    log,
    *,
    input_size: int | None = None,
    train_size: int | None = None,
    data_seed: int = 0,
    barrier=None,
) -> Models:
    """Sender trained with seed 0 and receiver with seed 1 when training is needed (two
    independently trained networks, as in Bansal et al.). Under torchrun rank 0 trains (and
    caches) them while the other ranks wait, then those load them from the zoo."""
    waiting = barrier is not None and barrier.on and barrier.rank != 0
    if waiting:
        barrier.barrier()
    t0 = time.perf_counter()
    kw = dict(input_size=input_size, train_size=train_size, data_seed=data_seed)
    s, s_info = base_model(sender, data, splits, 0, epochs, log, **kw)
    r, r_info = base_model(receiver, data, splits, 1, epochs, log, **kw)
    if barrier is not None and barrier.on and barrier.rank == 0:
        barrier.barrier()
    models = Models(s, r, {"sender": s_info, "receiver": r_info})
    models.seconds = time.perf_counter() - t0
    return models
