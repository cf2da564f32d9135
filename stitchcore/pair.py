"""One stitch between two models, end to end: ``stitchcore.stitch(...)`` and ``stitch pair``.

A pair is a group of one: it goes through the same :class:`~stitchcore.engine.Engine` as every
matrix cell (same seeds, same least-squares sample, same trainer, same metrics), so a pair and
the matrix cell of the same cuts, init, seed and epochs give the same numbers.

Data is a dataset's DataSplits (each model sees the images adapted to its own input spec, or
text through its own tokenizer), or ``(train, test)`` of model-ready data: tensors, a Dataset, a
DataLoader or any iterable of ``(inputs, labels)`` batches (both models see the same inputs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .cache import DEFAULT_BUDGET
from .cuts import Cut, Cutter
from .datasets import DataSplits
from .engine import ActivationCache, Engine, RunData, Side
from .errors import StitchError
from .families import StitchFamily, resolve_family
from .runtime import make_runtime
from .sources import LoadedModel
from .stitching import FrozenModelError, StitchConfig, StitchedModel
from .userdata import as_splits

__all__ = ["StitchResult", "stitch", "stitch_sides"]


@dataclass
class StitchResult:
    """A trained stitch and what it measured (``metrics``: the matrix cell's fields)."""

    model: StitchedModel
    family: str
    family_reason: str
    sender_cut: Cut
    receiver_cut: Cut
    config: StitchConfig
    metrics: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


def stitch(
    sender: nn.Module | LoadedModel | Cutter,
    sender_cut: str,
    receiver: nn.Module | LoadedModel | Cutter,
    receiver_cut: str,
    family: str | StitchFamily = "auto",
    *,
    train: DataSplits | Iterable | Any,
    test: Iterable | Any = None,
    objective: str = "task",
    init: str = "lstsq",
    epochs: int | None = None,
    max_epochs: int = 30,
    unsolved_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    example_input=None,
    logits: str | int | Callable | None = None,
    preprocess: Callable | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **family_options,
) -> StitchResult:
    """Train a stitch from ``sender`` at ``sender_cut`` into ``receiver`` at ``receiver_cut``.

    ``train`` is DataSplits (its test split is used for evaluation) or model-ready training
    data (then ``test`` too); see the module docstring. ``epochs`` None trains until the
    validation loss plateaus (capped at ``max_epochs``); an int trains exactly that many epochs.
    ``logits`` says which output of the receiver is the logits when it returns several;
    ``preprocess`` turns raw text into the models' input. Returns the trained StitchedModel and
    its metrics: stitched accuracy and loss on the test data, the models' own accuracies, the
    penalty (receiver − stitched), the accuracy right after initialisation, convergence (epochs,
    stop, curves) and the diagnostics (agreement, match R², effective ranks, OOD score).
    """
    family_obj = None if isinstance(family, str) else family
    cfg = StitchConfig(
        family=family if family_obj is None else family_obj.name,
        objective=objective, init=init, epochs=epochs, max_epochs=max_epochs,
        unsolved_epochs=unsolved_epochs, batch_size=batch_size, lr=lr, seed=seed,
        family_options=family_options,
    )  # fmt: skip
    s_side = Side.of(sender, example_input, preprocess=preprocess)
    r_side = Side.of(receiver, example_input, logits=logits, preprocess=preprocess)
    data = train if isinstance(train, DataSplits) else (train, test)
    if not isinstance(train, DataSplits) and test is None:
        raise StitchError("give test data (test=...) with model-ready training data")
    return stitch_sides(
        s_side, sender_cut, r_side, receiver_cut, cfg, data, on_step=on_step,
        family_obj=family_obj, device=device, precision=precision,
    )  # fmt: skip


def stitch_sides(
    s_side: Side,
    sender_cut: str,
    r_side: Side,
    receiver_cut: str,
    cfg: StitchConfig,
    data: Any,
    *,
    on_step: Callable[[int, int], None] | None = None,
    family_obj: StitchFamily | None = None,
    device: str = "auto",
    precision: str = "fp32",
    cache_gb: float = DEFAULT_BUDGET / 2**30,
    diagnostics: bool = True,
) -> StitchResult:
    """``stitch`` for prepared sides (the CLI's ``stitch pair``)."""
    start = time.perf_counter()
    runtime = make_runtime(device, precision)
    for side in (s_side, r_side):
        side.cutter.to(runtime.device)
    s_cut = s_side.cutter.resolve(sender_cut)
    r_cut = r_side.cutter.resolve(receiver_cut)
    if family_obj is None:
        fam, reason = resolve_family(cfg.family, s_cut.spec, r_cut.spec)
    else:
        fam, reason = family_obj, f"family object {family_obj.name!r} given"
        refusal = fam.accepts(s_cut.spec, r_cut.spec)
        if refusal:
            raise StitchError(f"family {fam.name!r} cannot stitch this pair: {refusal}")
    splits, ready = as_splits(data)
    run_data = RunData.for_models(splits, [s_side, r_side], runtime, ready=ready)
    cache = ActivationCache(runtime, memory_budget=int(cache_gb * 2**30))
    n = len(splits.train_y) + len(splits.test_y)
    cache.plan(math.prod(s_cut.spec.shape) * 4, n, lambda _m: None)
    engine = Engine(run_data, cfg, runtime, cache, diagnostics=diagnostics, on_step=on_step)
    try:
        engine.prepare_sender("real", s_side, [(0, s_cut)])
        own = {
            "sender_accuracy": engine.own_accuracy(s_side),
            "receiver_accuracy": engine.own_accuracy(r_side),
        }
        (res,) = engine.run_group(
            "main", "real", s_side, [(0, s_cut)], r_side, r_cut,
            receiver_accuracy=own["receiver_accuracy"], families={0: (fam, reason)},
        )  # fmt: skip
    finally:
        cache.close()
    cell = res.cell
    if cell["status"] != "ok":
        if "frozen model changed" in (cell["reason"] or ""):
            raise FrozenModelError(cell["reason"])
        raise StitchError(f"stitch {cell['status']}: {cell['reason']}")
    s_prefix, _ = s_side.cutter.split(s_cut)
    _, r_suffix = r_side.cutter.split(r_cut)
    model = StitchedModel(s_prefix, res.module, r_suffix)
    metrics = {k: v for k, v in cell.items() if k not in _NOT_METRICS}
    metrics.update(own, time_s=time.perf_counter() - start)
    return StitchResult(
        model, fam.name, reason, s_cut, r_cut, cfg, metrics, list(cell.get("train_curve", []))
    )


_NOT_METRICS = {"variant", "i", "j", "sender_cut", "receiver_cut", "status", "reason", "family",
                "family_reason", "group_time_s"}  # fmt: skip
