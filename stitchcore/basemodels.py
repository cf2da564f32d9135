"""The base models of a matrix: loaded as asked, or trained first when they must be.

A spec with explicit weights (``@random``, ``@PATH``, ``zoo:…``) is used as it is. A spec without
``@`` means "the pretrained model": when its weights are not available here (offline, not cached)
or its classifier does not fit the dataset, the model is trained on the dataset with
``stitch train``'s machinery, cached in the zoo, and the user is told so on stderr.
"""

from __future__ import annotations

from collections.abc import Callable

from .datasets import DataSplits
from .errors import StitchError
from .matrix import Models
from .sources import LoadedModel, load_model, parse_spec
from .zoo import ensure_trained


def base_model(
    spec: str, data: str, splits: DataSplits, seed: int, epochs: int, log: Callable[[str], None]
) -> tuple[LoadedModel, dict]:
    parsed = parse_spec(spec)
    record = None
    if parsed.weights is not None or parsed.source == "zoo":
        loaded = load_model(spec)
    else:
        try:
            loaded = load_model(spec)
            needs_training = loaded.num_classes != splits.num_classes
            why = f"its classifier has {loaded.num_classes} outputs, {data} has {splits.num_classes} classes"
        except StitchError as exc:  # offline and not cached, or no pretrained weights at all
            needs_training, why = True, str(exc)
            to_train = f"{spec}@random"
        else:  # pretrained weights with a classifier for another task: fine-tune them
            to_train = f"{spec}@pretrained"
        if needs_training:
            log(f"{spec}: {why}; training it on {data} (seed {seed}, {epochs} epochs, in the zoo)")
            loaded, record = ensure_trained(
                to_train, data, seed=seed, epochs=epochs, head="finetune", log=log
            )
    info = {
        "spec": spec,
        "loaded_as": loaded.spec,
        "trained": record,
        "input": loaded.input.to_json(),
        "num_classes": loaded.num_classes,
    }
    return loaded, info


def prepare_models(
    sender: str, receiver: str, data: str, splits: DataSplits, epochs: int, log
) -> Models:
    """Sender trained with seed 0 and receiver with seed 1 when training is needed (two
    independently trained networks, as in Bansal et al.)."""
    s, s_info = base_model(sender, data, splits, 0, epochs, log)
    r, r_info = base_model(receiver, data, splits, 1, epochs, log)
    return Models(s, r, {"sender": s_info, "receiver": r_info})
