"""The one stitch trainer: every stitch (a ``stitch pair``, a matrix cell, ``stitchcore.stitch``)
is trained and evaluated here, as a member of a *group* of stitches into the same receiver cut.

A pair is a group of one. All members of a group map into the same receiver cut, so their outputs
have the same shape and one batched pass of the frozen receiver suffix over the concatenated
outputs trains all of them: each stitch gets the gradient of its own loss only (the losses are
summed and the stitches share no parameter), and each has its own Adam optimiser and gradient
scaler, so a group trains every member exactly as it would train alone.

Two ways to decide how long (``StitchConfig.epochs``):

- ``epochs=None`` (the default): *until converged*. A slice of the training split is held out
  for validation (never the test split); after each epoch the member's validation loss is
  measured. An epoch *improves* when the validation accuracy rises above the best so far, or
  equals it with a validation loss at least 1 % and 0.01 nats lower (for ``match``: the MSE
  1 % and 0.1 % of the target's variance lower). An epoch
  that does not improve halves the member's learning rate, and ``patience`` such epochs in a row
  end it (``stop="plateau"``), with the weights of its best validation epoch restored; ``max_epochs`` caps it (``stop="cap"``,
  ``converged=False``). A member that stopped leaves the group's batch, so the remaining
  compute goes to the cells still learning.
- ``epochs=N``: exactly N epochs on the whole training split with cosine decay (the published
  recipe; ``stop="fixed"``, reported as "not converged").

A closed-form stitch that already does the job (:func:`stitching.starts_solved`) is fine-tuned
gently (fan-in-scaled lr, warm-up); one whose closed form is no better than chance
(:func:`stitching.at_chance`) restarts from its random init and learns from scratch
(``from_scratch``); one in between trains from its closed form at the full lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .cuts import run_suffix
from .diagnostics import CellDiagnostics, GaussianFit
from .runtime import Runtime
from .stitching import (
    FINE_TUNE_WARMUP,
    FIRST_LOOK,
    StitchConfig,
    at_chance,
    base_lrs,
    cosine,
    head_fits,
    starts_solved,
)

__all__ = [
    "MIN_IMPROVEMENT",
    "MIN_LOSS_DROP",
    "MIN_MATCH_DROP",
    "Batch",
    "Feed",
    "Member",
    "evaluate_members",
    "frozen_weights",
    "improves",
    "train_members",
]

#: Relative drop of the validation loss that counts as progress at equal validation accuracy.
MIN_IMPROVEMENT = 1e-2
#: ... and the least absolute drop of a cross-entropy there, in nats per sample: below it, at an
#: accuracy that no longer moves, only the confidence of predictions already right grows.
MIN_LOSS_DROP = 1e-2
#: ... and for the ``match`` objective, the least drop of the matching MSE as a fraction of the
#: receiver activation's variance on the validation slice (0.1 % of R²): an exact closed form
#: (an identity, MSE ≈ 0) must not keep "improving" on rounding noise.
MIN_MATCH_DROP = 1e-3
#: Accuracy this close to chance (1 / classes) counts as "at chance" for the warning.
CHANCE_MARGIN = 0.02
#: A final training loss this many times the chance level (ln classes): training diverged.
ABSURD_LOSS = 10.0


@dataclass
class Batch:
    """One batch as the trainer sees it, on the run's device: sender activations by sender-cut
    key, labels, and when asked the receiver's own activation at the cut (``target``), its input
    (``context``, for suffixes with side inputs) and its own predictions."""

    idx: torch.Tensor
    y: torch.Tensor
    acts: dict
    target: torch.Tensor | None = None
    context: object = None
    receiver_pred: torch.Tensor | None = None


class Feed(Protocol):
    def batches(self, order: torch.Tensor, batch_size: int, *, train: bool) -> Iterator[Batch]: ...


@dataclass
class Member:
    """One stitch in a group."""

    key: object  # the sender cut's key in Batch.acts
    module: nn.Module
    trainable: bool = True
    cell: object = None  # the caller's handle (e.g. the matrix cell)
    scratch: dict | None = None  # the random-init state, for a from-scratch restart
    failed: str | None = None
    train_curve: list[float] = field(default_factory=list)
    val_curve: list[float] = field(default_factory=list)  # validation accuracy (or -MSE)
    val_loss: list[float] = field(default_factory=list)
    fine_tuned: bool = False
    from_scratch: bool = False
    epochs: int = 0
    stop: str | None = None  # plateau | cap | fixed
    loss_rose: bool = False

    @property
    def converged(self) -> bool | None:
        return {"plateau": True, "cap": False}.get(self.stop)


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Within the block no parameter of ``module`` requires a gradient (restored afterwards):
    backward through the suffix computes only the gradient with respect to its input, 2-3x less
    work per step on a ResNet suffix, and no ``.grad`` buffers on the frozen model."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class _Opt:
    """A member's Adam, gradient scaler and learning-rate factors."""

    def __init__(self, m: Member, cfg: StitchConfig, runtime: Runtime, steps: int) -> None:
        params = [p for p in m.module.parameters() if p.requires_grad]
        self.base = base_lrs(params, cfg.lr, m.fine_tuned)
        self.opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, self.base)])
        self.scaler = runtime.scaler()
        self.steps, self.step_no = max(1, steps), 0
        self.warm = int(FINE_TUNE_WARMUP * self.steps) if m.fine_tuned else 0
        self.fixed = cfg.epochs is not None
        self.scale = 1.0  # halved on each plateau epoch (convergence mode)

    def set_lr(self) -> None:
        ramp = min(1.0, (self.step_no + 1) / (self.warm + 1))
        decay = cosine(self.step_no, self.steps) if self.fixed else self.scale
        for group, base in zip(self.opt.param_groups, self.base):
            group["lr"] = base * ramp * decay


def _select(logits_of: Callable, out) -> torch.Tensor:
    return logits_of(out).float()


def _forward(members, batch: Batch, suffix, objective: str, logits_of) -> list[torch.Tensor]:
    if objective == "match":
        r = batch.target
        return [F.mse_loss(m.module(batch.acts[m.key]).float(), r.float()) for m in members]
    return [F.cross_entropy(part, batch.y) for part in _logits(members, batch, suffix, logits_of)]


def _logits(members, batch: Batch, suffix, logits_of) -> list[torch.Tensor]:
    """Each member's class scores on the batch, through one pass of the suffix."""
    zs = [m.module(batch.acts[m.key]) for m in members]
    ctx = batch.context
    if ctx is not None and len(zs) > 1:
        ctx = _repeat(ctx, len(zs))
    return list(_select(logits_of, run_suffix(suffix, torch.cat(zs), ctx)).split(len(batch.idx)))


def _repeat(ctx, k: int):
    if isinstance(ctx, torch.Tensor):
        return ctx.repeat(k, *[1] * (ctx.dim() - 1))
    if isinstance(ctx, dict):
        return {key: _repeat(v, k) for key, v in ctx.items()}
    if isinstance(ctx, (tuple, list)):
        return type(ctx)(_repeat(v, k) for v in ctx)
    return ctx


def train_members(
    members: list[Member],
    suffix: nn.Module,
    feed: Feed,
    cfg: StitchConfig,
    runtime: Runtime,
    *,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor | None,
    num_classes: int,
    logits_of: Callable,
    on_step: Callable[[int, int], None] | None = None,
) -> None:
    """Train the trainable members in place (see the module docstring for when they stop). A
    member whose loss stops being finite is marked failed; the others go on."""
    active = [m for m in members if m.trainable and m.failed is None]
    active = [m for m in active if any(p.requires_grad for p in m.module.parameters())]
    fixed = cfg.epochs is not None
    most = max(cfg.epochs, cfg.unsolved_epochs or 0) if fixed else cfg.max_epochs
    if not active or most == 0:
        for m in active:
            m.stop = "fixed" if fixed else None
        return
    if not fixed and (val_idx is None or len(val_idx) == 0):
        raise ValueError("training until converged needs a validation slice")
    _first_look(active, suffix, feed, cfg, train_idx, num_classes, logits_of)
    # epochs per member: fixed N (at least unsolved_epochs for one learning from scratch), or
    # up to the cap when training until converged
    cap = {
        id(m): (cfg.epochs if m.fine_tuned or cfg.unsolved_epochs is None
                else max(cfg.epochs, cfg.unsolved_epochs)) if fixed else cfg.max_epochs
        for m in active
    }  # fmt: skip
    n = len(train_idx)
    steps_per_epoch = max(1, sum(1 for _ in _chunks(n, cfg.batch_size)))
    opts = {id(m): _Opt(m, cfg, runtime, cap[id(m)] * steps_per_epoch) for m in active}
    best: dict[int, tuple[float, float, dict]] = {}
    bad: dict[int, int] = {id(m): 0 for m in active}
    min_epochs = {id(m): (cfg.unsolved_epochs or 0) if not m.fine_tuned else 0 for m in active}
    gen = torch.Generator().manual_seed(cfg.seed)
    live = [m for m in active if cap[id(m)] > 0]
    most = max([cap[id(m)] for m in live], default=0)
    step, total = 0, most * steps_per_epoch
    with frozen_weights(suffix):
        for epoch in range(most):
            if not live:
                break
            for m in live:
                m.module.train()
            sums = {id(m): [0.0, 0] for m in live}
            order = train_idx[torch.randperm(n, generator=gen)]
            for batch in feed.batches(order, cfg.batch_size, train=True):
                stepping = [m for m in live if m.failed is None]
                if not stepping:
                    break
                with runtime.autocast():
                    losses = _forward(stepping, batch, suffix, cfg.objective, logits_of)
                total_loss = None
                for m, loss in zip(stepping, losses):
                    if not torch.isfinite(loss):
                        what = "overflow" if runtime.precision == "fp16" else "diverged"
                        m.failed = f"{what}: loss {loss.item()} at step {step}"
                        continue
                    o = opts[id(m)]
                    scaled = o.scaler.scale(loss)
                    total_loss = scaled if total_loss is None else total_loss + scaled
                    sums[id(m)][0] += loss.item()
                    sums[id(m)][1] += 1
                for m in stepping:
                    opts[id(m)].opt.zero_grad(set_to_none=True)
                if total_loss is not None:
                    total_loss.backward()
                    for m in stepping:
                        if m.failed:
                            continue
                        o = opts[id(m)]
                        o.set_lr()
                        o.scaler.step(o.opt)
                        o.scaler.update()
                        o.step_no += 1
                step += 1
                if on_step:
                    on_step(step, total)
            still = []
            for m in live:
                if m.failed:
                    continue
                s, k = sums[id(m)]
                m.train_curve.append(s / max(1, k))
                m.epochs = epoch + 1
                still.append(m)
            if fixed:
                live = [m for m in still if m.epochs < cap[id(m)]]
                continue
            live = still
            stats = evaluate_members(
                live, suffix, feed, val_idx, runtime, num_classes=num_classes,
                logits_of=logits_of, objective=cfg.objective,
            )  # fmt: skip
            ending = []
            for m in live:
                loss, acc = stats[id(m)]["loss"], stats[id(m)]["accuracy"]
                m.val_loss.append(loss)
                m.val_curve.append(acc if acc is not None else -loss)
                prev = best.get(id(m))
                score = acc if acc is not None else -float("inf")
                floor = (
                    MIN_LOSS_DROP if acc is not None
                    else MIN_MATCH_DROP * (stats[id(m)].get("target_var") or 0.0)
                )  # fmt: skip
                if prev is None or improves(score, loss, prev[0], prev[1], floor):
                    best[id(m)] = (score, loss, _state(m.module))
                    bad[id(m)] = 0
                elif m.epochs >= min_epochs[id(m)]:
                    bad[id(m)] += 1
                    opts[id(m)].scale *= 0.5
                if bad[id(m)] >= cfg.patience:
                    m.stop = "plateau"
                    ending.append(m)
            live = [m for m in live if m not in ending and m.epochs < cap[id(m)]]
    for m in active:
        if m.failed:
            continue
        if fixed:
            m.stop = "fixed"
        elif m.stop is None:
            m.stop = "cap"
        if id(m) in best:
            m.module.load_state_dict(best[id(m)][2])
        m.module.eval()
        m.loss_rose = len(m.train_curve) > 1 and m.train_curve[-1] > m.train_curve[0]


def improves(acc: float, loss: float, best_acc: float, best_loss: float, floor: float) -> bool:
    """Progress: a higher validation accuracy, or the same one with a loss at least 1 % lower
    and at least ``floor`` lower (``MIN_LOSS_DROP`` for a cross-entropy; for the matching MSE,
    ``MIN_MATCH_DROP`` × the target's variance)."""
    if acc > best_acc:
        return True
    drop = max(MIN_IMPROVEMENT * abs(best_loss), floor)
    return acc == best_acc and loss < best_loss - drop


def _state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _chunks(n: int, size: int) -> Iterable[int]:
    return (s for s in range(0, n, size) if min(size, n - s) >= 2)


@torch.no_grad()
def _first_look(active, suffix, feed, cfg, train_idx, num_classes, logits_of) -> None:
    """How each member starts, from its closed form's eval-mode loss and accuracy on the first
    training samples: fine-tuned gently when it :func:`starts_solved`; restarted from its random
    init when it is :func:`at_chance`; otherwise trained from the closed form at the full lr."""
    if cfg.init == "random":
        return
    if cfg.objective == "match":  # any closed form of the copying task is a start
        for m in active:
            m.fine_tuned = True
        return
    for m in active:
        m.module.eval()
    idx = train_idx[:FIRST_LOOK]
    batch = next(iter(feed.batches(idx, len(idx), train=True)))
    for m, logits in zip(active, _logits(active, batch, suffix, logits_of)):
        loss = float(F.cross_entropy(logits, batch.y))
        accuracy = float((logits.argmax(1) == batch.y).float().mean())
        m.fine_tuned = starts_solved(cfg, loss, num_classes)
        if (
            not m.fine_tuned
            and m.scratch is not None
            and at_chance(accuracy, len(idx), num_classes)
        ):
            m.module.load_state_dict(m.scratch)
            m.from_scratch = True


@torch.no_grad()
def evaluate_members(
    members: list[Member],
    suffix: nn.Module,
    feed: Feed,
    idx: torch.Tensor,
    runtime: Runtime,
    *,
    num_classes: int,
    logits_of: Callable,
    objective: str = "task",
    batch_size: int = 256,
    diagnostics: dict | None = None,
) -> dict[int, dict]:
    """Accuracy, cross-entropy (None where the receiver's output is not class scores over
    ``num_classes``) and, when the feed gives the receiver's activation, the matching MSE of
    every non-failed member on samples ``idx``; with ``diagnostics`` ({id(member):
    CellDiagnostics}) those are updated too. Keyed by ``id(member)``."""
    live = [m for m in members if m.failed is None]
    stats = {id(m): {"correct": 0, "loss": 0.0, "mse": 0.0, "fits": True} for m in live}
    t_sum = t_sq = None  # the target's per-element sums, for its variance
    if not live:
        return {}
    chunk = max(2, batch_size // len(live))
    for m in live:
        m.module.eval()
    n = 0
    for batch in feed.batches(idx, chunk, train=False):
        n += len(batch.idx)
        with runtime.autocast():
            zs = [m.module(batch.acts[m.key]) for m in live]
            logits = None
            if objective == "task" or diagnostics is not None:
                ctx = _repeat(batch.context, len(zs)) if batch.context is not None else None
                logits = _select(logits_of, run_suffix(suffix, torch.cat(zs), ctx))
        if batch.target is not None:
            t = batch.target.detach().float().flatten(1)
            t_sum = t.sum(0) if t_sum is None else t_sum + t.sum(0)
            t_sq = (t * t).sum(0) if t_sq is None else t_sq + (t * t).sum(0)
        parts = logits.split(len(batch.idx)) if logits is not None else [None] * len(live)
        for m, z, part in zip(live, zs, parts):
            st = stats[id(m)]
            fits = part is not None and st["fits"] and head_fits(part, num_classes)
            st["fits"] = fits
            if fits:
                st["correct"] += int((part.argmax(1) == batch.y).sum())
                st["loss"] += float(F.cross_entropy(part, batch.y, reduction="sum"))
            if batch.target is not None:
                per = F.mse_loss(z.float(), batch.target.float(), reduction="sum") / z[0].numel()
                st["mse"] += float(per)
            if diagnostics is not None:
                pred = part.argmax(1) if fits else None
                diagnostics[id(m)].update(z.float(), batch.target, pred, batch.receiver_pred)
    out = {}
    for m in live:
        st = stats[id(m)]
        res = {
            "accuracy": st["correct"] / n if st["fits"] and n else None,
            "loss": st["loss"] / n if st["fits"] and n else None,
        }
        if objective == "match" or res["loss"] is None:
            res["loss"] = st["mse"] / max(1, n)
        if objective == "match" or diagnostics is not None:
            res["match_mse"] = st["mse"] / max(1, n) if n else None
        if t_sum is not None and n:
            res["target_var"] = float((t_sq / n - (t_sum / n) ** 2).mean())
        out[id(m)] = res
    return out


def gaussian_of(pooled: torch.Tensor | None) -> GaussianFit | None:
    """The receiver's activation Gaussian for the OOD score (None without samples)."""
    if pooled is None or len(pooled) < 2:
        return None
    return GaussianFit(pooled)


def new_diagnostics(members: list[Member], layout: str, gauss: GaussianFit | None) -> dict:
    return {id(m): CellDiagnostics(layout, gauss) for m in members if m.failed is None}


def measurement_warning(acc: float | None, num_classes: int, m: Member) -> str | None:
    """A warning for a stitch whose number looks like a measurement and is not: its training
    diverged (final training loss over ``ABSURD_LOSS`` × the chance level ln C, e.g. an absurd
    learning rate), or it ended at or below chance while its training loss rose."""
    if acc is None or m.failed or not m.train_curve:
        return None
    chance_loss = math.log(max(2, num_classes))
    if m.train_curve[-1] > ABSURD_LOSS * chance_loss:
        return (
            f"training diverged (final training loss {m.train_curve[-1]:.3g}, chance level "
            f"{chance_loss:.2f}): not a measurement"
        )
    if acc <= 1.0 / max(1, num_classes) + CHANCE_MARGIN and m.loss_rose:
        return "ended at or below chance while its training loss rose: not a measurement"
    return None
    if acc > 1.0 / max(1, num_classes) + CHANCE_MARGIN:
        return None
    if m.loss_rose:
        return "ended at or below chance while its training loss rose: not a measurement"
    chance_loss = math.log(max(2, num_classes))
    if m.train_curve[-1] > ABSURD_LOSS * chance_loss:
        return (
            f"ended at or below chance with a training loss of {m.train_curve[-1]:.3g} (chance "
            f"level {chance_loss:.2f}): not a measurement"
        )
    return None
