"""Training several stitches into the same receiver cut at once.

All stitches of a group map into the same receiver cut, so their outputs have the same shape:
one batched pass of the receiver's suffix over the concatenated outputs trains all of them (each
stitch gets the gradient of its own loss only, since the losses are summed and the stitches share
no parameter). Adam is per-parameter, so one optimiser over all stitches equals one per stitch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cache import take
from .cuts import run_suffix
from .stitching import (
    FIRST_LOOK,
    StitchConfig,
    head_fits,
    logits_of,
    optimizer,
    restart_unsolved,
    starts_solved,
)


@dataclass
class Member:
    """One stitch in a group: its module, family and where its sender activations are."""

    key: tuple
    module: nn.Module
    trainable: bool
    sender: object  # store with take(idx)
    failed: str | None = None
    history: list[float] = field(default_factory=list)
    #: the module's random-init state, to learn from scratch when its closed form does not
    #: start solved and ``unsolved_epochs`` is set (None: keep the closed form)
    scratch: dict | None = None
    fine_tuned: bool = False  # its closed form started solved (stitching.starts_solved)
    from_scratch: bool = False  # restarted from ``scratch``
    epochs: int = 0  # epochs it trains (StitchConfig.epochs_for)


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Within the block, no parameter of ``module`` requires a gradient; restored afterwards.

    Backward through the suffix then computes only the gradient with respect to its input (what
    the stitches need), not weight gradients for the whole receiver: 2-3x less work per step on
    a ResNet suffix, and no ``.grad`` buffers accumulating on the frozen model. Restored because a
    split shares its parameters with the cutter's traced copy, which other splits use.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train_group(
    members: list[Member],
    suffix: nn.Module,
    labels: torch.Tensor,
    cfg: StitchConfig,
    target=None,
    context: torch.Tensor | None = None,
    on_step=None,
) -> None:
    """Train the group's trainable members in place; a member whose loss stops being finite is
    marked failed and dropped, the others go on."""
    active = [
        m for m in members if m.trainable and any(p.requires_grad for p in m.module.parameters())
    ]
    if not active or max(cfg.epochs, cfg.unsolved_epochs or 0) == 0:
        return
    n = len(labels)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    solved = _starts_solved(active, suffix, labels, cfg, target, context)
    for m, ok in zip(active, solved):
        m.fine_tuned, m.epochs = ok, cfg.epochs_for(ok)
        m.from_scratch = restart_unsolved(m.module, m.scratch, cfg, ok)
    active = [m for m in active if m.epochs > 0]
    if not active:
        return
    epochs = max(m.epochs for m in active)
    total = epochs * steps_per_epoch
    opt, sched = optimizer(
        [m.module for m in active],
        cfg,
        [m.epochs * steps_per_epoch for m in active],
        [m.fine_tuned for m in active],
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    for m in active:
        m.module.train()
    with frozen_weights(suffix):  # only the stitches learn; no weight grads
        step = 0
        for epoch in range(epochs):
            sums = {id(m): [0.0, 0] for m in active}
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                # a member whose epochs are done gets no gradient, so Adam leaves it alone
                live = [m for m in active if m.failed is None and epoch < m.epochs]
                if len(idx) < 2 or not live:
                    continue
                losses = _group_losses(live, suffix, idx, labels, cfg.objective, target, context)
                total_loss = 0.0
                for m, loss in zip(live, losses):
                    if not torch.isfinite(loss):
                        m.failed = f"diverged: loss {loss.item()} at step {step}"
                        continue
                    total_loss = total_loss + loss
                    sums[id(m)][0] += loss.item()
                    sums[id(m)][1] += 1
                opt.zero_grad(set_to_none=True)
                if isinstance(total_loss, torch.Tensor):
                    total_loss.backward()
                    for m in live:  # a failed member must not step on a NaN gradient
                        if m.failed:
                            for p in m.module.parameters():
                                p.grad = None
                    opt.step()
                    sched.step()
                step += 1
                if on_step:
                    on_step(step, total)
            for m in active:
                s, k = sums[id(m)]
                if m.failed is None and epoch < m.epochs:
                    m.history.append(s / max(1, k))
    for m in active:
        m.module.eval()


@torch.no_grad()
def _starts_solved(active, suffix, labels, cfg, target, context) -> list[bool]:
    """Which members fine-tune a solution (stitching.starts_solved), from their eval-mode loss
    on the first training samples."""
    if cfg.init == "random":
        return [False] * len(active)
    for m in active:
        m.module.eval()
    idx = torch.arange(min(len(labels), FIRST_LOOK))
    losses = _group_losses(active, suffix, idx, labels, cfg.objective, target, context)
    classes = int(labels.max()) + 1
    return [starts_solved(cfg, float(loss), classes) for loss in losses]


def _group_losses(live, suffix, idx, labels, objective, target, context):
    zs = [m.module(take(m.sender, idx)) for m in live]
    if objective == "match":
        r = take(target, idx)
        return [F.mse_loss(z, r) for z in zs]
    ctx = None if context is None else context[idx].repeat(len(zs), *[1] * (context.dim() - 1))
    logits = logits_of(run_suffix(suffix, torch.cat(zs), ctx))
    y = labels[idx]
    return [F.cross_entropy(part, y) for part in logits.split(len(idx))]


@torch.no_grad()
def evaluate_group(
    members: list[Member],
    suffix: nn.Module,
    labels: torch.Tensor,
    num_classes: int,
    context: torch.Tensor | None = None,
    batch_size: int = 256,
) -> dict[tuple, dict]:
    """Accuracy and cross-entropy of every non-failed member on a split, batched through the
    suffix like training."""
    live = [m for m in members if m.failed is None]
    stats = {m.key: [0, 0.0, True] for m in live}
    n = len(labels)
    chunk = max(1, batch_size // max(1, len(live)))
    for m in live:
        m.module.eval()
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk))
        zs = [m.module(take(m.sender, idx)) for m in live]
        if not zs:
            break
        ctx = None if context is None else context[idx].repeat(len(zs), *[1] * (context.dim() - 1))
        logits = logits_of(run_suffix(suffix, torch.cat(zs), ctx))
        y = labels[idx]
        for m, part in zip(live, logits.split(len(idx))):
            st = stats[m.key]
            st[2] = st[2] and head_fits(part, num_classes)
            if st[2]:
                st[0] += (part.argmax(1) == y).sum().item()
                st[1] += F.cross_entropy(part, y, reduction="sum").item()
    return {
        key: {
            "accuracy": c / n if ok else None,
            "loss": s / n if ok else None,
        }
        for key, (c, s, ok) in stats.items()
    }
