"""One stitch between two models, end to end: ``stitchcore.stitch(...)``.

Data comes either as DataSplits from a dataset plugin (each model sees the images adapted to its
own input spec) or as any iterable of model-ready ``(inputs, labels)`` batches (both models see
the same inputs). Sender activations are computed once and reused for every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .cuts import Cut, Cutter
from .datasets import DataSplits, adapt, batches
from .errors import StitchError
from .families import StitchFamily, resolve_family
from .sources import LoadedModel
from .spec import InputSpec
from .stitching import (
    ActSplit,
    FrozenGuard,
    StitchConfig,
    StitchedModel,
    evaluate_stitch,
    head_fits,
    initialise,
    logits_of,
    scratch_state,
    train_stitch,
)


@dataclass
class Side:
    """A model as one side of a pair: cutter, input spec and a label for reports."""

    cutter: Cutter
    input: InputSpec | None
    label: str

    @classmethod
    def of(cls, model: nn.Module | LoadedModel | Cutter, example_input=None) -> Side:
        cutter = model if isinstance(model, Cutter) else Cutter(model, example_input)
        return cls(cutter, cutter.hints.input, cutter.label)

    @property
    def module(self) -> nn.Module:
        return self.cutter.module

    def view(self, images: torch.Tensor, raw: bool) -> torch.Tensor:
        """The model's input for a batch: adapted dataset images, or the batch itself."""
        if not raw:
            return images
        if self.input is None:
            raise StitchError(f"{self.label} has no input spec to adapt dataset images to")
        return adapt(images, self.input)


@dataclass
class StitchResult:
    """A trained stitch and what it measured."""

    model: StitchedModel
    family: str
    family_reason: str
    sender_cut: Cut
    receiver_cut: Cut
    config: StitchConfig
    metrics: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


def _iter_data(data, batch_size: int, split: str):
    if isinstance(data, DataSplits):
        x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
        return batches(x, y, batch_size), True
    return iter(data), False


@torch.no_grad()
def collect(
    data,
    split: str,
    sender: Side,
    sender_prefix: nn.Module,
    receiver: Side,
    receiver_prefix: nn.Module | None,
    *,
    want_context: bool,
    own_accuracy: bool,
    batch_size: int = 256,
    num_classes: int | None = None,
) -> tuple[ActSplit, dict]:
    """One pass over a split: sender activations (and receiver activations/inputs when
    needed), plus the sender's and receiver's own accuracy on it."""
    acts, targets, contexts, labels = [], [], [], []
    own = {"sender": [0, True], "receiver": [0, True]}
    it, raw = _iter_data(data, batch_size, split)
    for images, y in it:
        xs = sender.view(images, raw)
        xr = receiver.view(images, raw)
        acts.append(sender_prefix(xs))
        if receiver_prefix is not None:
            targets.append(receiver_prefix(xr))
        if want_context:
            contexts.append(xr)
        labels.append(y)
        if own_accuracy:
            n_cls = num_classes or int(y.max()) + 1
            for key, side, x in (("sender", sender, xs), ("receiver", receiver, xr)):
                if own[key][1]:
                    logits = logits_of(side.module(x))
                    own[key][1] = head_fits(logits, n_cls)
                    own[key][0] += (logits.argmax(1) == y).sum().item() if own[key][1] else 0
    if not labels:
        raise StitchError(f"the {split} data is empty")
    y_all = torch.cat(labels)
    split_data = ActSplit(
        sender=torch.cat(acts),
        labels=y_all,
        target=torch.cat(targets) if targets else None,
        context=torch.cat(contexts) if contexts else None,
        num_classes=num_classes,
    )
    accs = (
        {f"{k}_accuracy": (v[0] / len(y_all) if v[1] else None) for k, v in own.items()}
        if own_accuracy
        else {}
    )
    return split_data, accs


def stitch(
    sender: nn.Module | LoadedModel | Cutter,
    sender_cut: str,
    receiver: nn.Module | LoadedModel | Cutter,
    receiver_cut: str,
    family: str | StitchFamily = "auto",
    *,
    train: DataSplits | Iterable,
    test: Iterable | None = None,
    objective: str = "task",
    init: str = "lstsq",
    epochs: int = 2,
    unsolved_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    example_input=None,
    on_step: Callable[[int, int, float], None] | None = None,
    **family_options,
) -> StitchResult:
    """Train a stitch from ``sender`` at ``sender_cut`` into ``receiver`` at ``receiver_cut``.

    ``train`` is DataSplits (its test split is used for evaluation) or an iterable of
    ``(inputs, labels)`` batches; then pass ``test`` too (another iterable) to get test metrics.
    Returns the trained StitchedModel and its metrics: stitched accuracy and loss on the test
    data, the sender's and receiver's own accuracy, the stitching penalty (receiver − stitched),
    and the stitched accuracy right after initialisation. ``unsolved_epochs``: see
    ``stitch matrix --unsolved-epochs`` (a closed form at chance restarts from random init).
    """
    family_obj = None if isinstance(family, str) else family
    cfg = StitchConfig(
        family=family if family_obj is None else family_obj.name,
        objective=objective,
        init=init,
        epochs=epochs,
        unsolved_epochs=unsolved_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        family_options=family_options,
    )
    s_side = Side.of(sender, example_input)
    r_side = Side.of(receiver, example_input)
    return stitch_sides(
        s_side, sender_cut, r_side, receiver_cut, cfg, train, test, on_step, family_obj
    )


def stitch_sides(
    s_side: Side,
    sender_cut: str,
    r_side: Side,
    receiver_cut: str,
    cfg: StitchConfig,
    train,
    test=None,
    on_step=None,
    family_obj: StitchFamily | None = None,
) -> StitchResult:
    """``stitch`` for already-prepared sides (the matrix reuses one Side per model)."""
    start = time.perf_counter()
    s_cut = s_side.cutter.resolve(sender_cut)
    r_cut = r_side.cutter.resolve(receiver_cut)
    if family_obj is None:
        fam, reason = resolve_family(cfg.family, s_cut.spec, r_cut.spec)
    else:
        fam, reason = family_obj, f"family object {family_obj.name!r} given"
        refusal = fam.accepts(s_cut.spec, r_cut.spec)
        if refusal:
            raise StitchError(f"family {fam.name!r} cannot stitch this pair: {refusal}")
    s_prefix, _ = s_side.cutter.split(s_cut)
    r_prefix, r_suffix = r_side.cutter.split(r_cut)
    need_target = cfg.objective == "match" or cfg.init == "lstsq" or not fam.trainable
    want_context = bool(getattr(r_suffix, "needs_context", False))
    num_classes = train.num_classes if isinstance(train, DataSplits) else None
    common = dict(want_context=want_context, num_classes=num_classes)
    train_data, _ = collect(
        train, "train", s_side, s_prefix, r_side, r_prefix if need_target else None,
        own_accuracy=False, **common,
    )  # fmt: skip
    test_src = train if isinstance(train, DataSplits) else test
    test_data, own = (
        collect(
            test_src,
            "test",
            s_side,
            s_prefix,
            r_side,
            r_prefix if cfg.objective == "match" else None,
            own_accuracy=True,
            **common,
        )  # fmt: skip
        if test_src is not None
        else (None, {})
    )
    torch.manual_seed(cfg.seed)
    module = fam.build(s_cut.spec, r_cut.spec, **cfg.family_options)
    sample = None
    if need_target:
        k = min(cfg.init_samples, len(train_data))
        idx = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(cfg.seed))[:k]
        sample = (train_data.sender[idx].float(), train_data.target[idx].float())
    scratch = scratch_state(module, cfg)  # for --unsolved-epochs
    initialise(module, fam, cfg, sample)
    stitched = StitchedModel(s_prefix, module, r_suffix)
    guard = FrozenGuard(sender_prefix=s_prefix, receiver_suffix=r_suffix)
    metrics: dict = {}
    if test_data is not None:
        metrics["init_accuracy"] = evaluate_stitch(module, r_suffix, test_data)["accuracy"]
    history = train_stitch(module, fam, r_suffix, train_data, cfg, on_step, scratch=scratch)
    guard.verify()
    metrics["train_loss"] = history[-1] if history else None
    if test_data is not None:
        ev = evaluate_stitch(module, r_suffix, test_data)
        metrics.update(stitched_accuracy=ev["accuracy"], stitched_loss=ev["loss"], **own)
        if "match_mse" in ev:
            metrics["match_mse"] = ev["match_mse"]
        ra, sa = own.get("receiver_accuracy"), ev["accuracy"]
        metrics["penalty"] = ra - sa if ra is not None and sa is not None else None
    metrics["time_s"] = time.perf_counter() - start
    return StitchResult(stitched, fam.name, reason, s_cut, r_cut, cfg, metrics, history)
