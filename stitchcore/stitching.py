"""The stitched model and how its stitch is trained and evaluated.

Sender prefix and receiver suffix are frozen: eval mode, no gradients, and their parameters and
buffers are checked unchanged after training (a changed BatchNorm running mean is an error, not a
footnote). Training reads sender activations from a store filled once, so each step runs only
the stitch and the receiver's suffix (``task`` objective) or only the stitch (``match``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cache import take
from .cuts import run_suffix
from .errors import StitchError
from .families import StitchFamily
from .graph import _flat_tensors

OBJECTIVES = ("task", "match")
INITS = ("random", "lstsq", "identity")


class FrozenModelError(RuntimeError):
    """A frozen sender or receiver changed during stitch training (an engine or plugin bug)."""


class DivergedError(StitchError):
    """The stitch's loss became NaN or infinite."""


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class FrozenGuard:
    """Snapshot of modules' parameters and buffers; ``verify()`` raises if any changed."""

    def __init__(self, **modules: nn.Module) -> None:
        self.snapshots = {
            name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in modules.items()
        }
        self.modules = modules

    def verify(self) -> None:
        changed = []
        for name, module in self.modules.items():
            now = module.state_dict()
            for key, before in self.snapshots[name].items():
                if key not in now or not torch.equal(now[key], before):
                    changed.append(f"{name}.{key}")
        if changed:
            shown = ", ".join(changed[:5]) + (
                f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
            )
            raise FrozenModelError(f"frozen model state changed during stitch training: {shown}")


class StitchedModel(nn.Module):
    """``receiver_suffix(stitch(sender_prefix(x)))`` with sender and receiver frozen.

    ``receiver_input`` is the receiver's own view of the input, needed only by suffixes that
    recompute side inputs (attention masks); by default it is ``x``.
    """

    def __init__(self, sender_prefix: nn.Module, stitch: nn.Module, receiver_suffix: nn.Module):
        super().__init__()
        self.sender_prefix = freeze(sender_prefix)
        self.stitch = stitch
        self.receiver_suffix = freeze(receiver_suffix)

    def train(self, mode: bool = True) -> StitchedModel:
        self.training = mode
        self.stitch.train(mode)
        self.sender_prefix.eval()
        self.receiver_suffix.eval()
        return self

    def forward(self, x, receiver_input=None):
        with torch.no_grad():
            h = self.sender_prefix(x)
        z = self.stitch(h)
        return run_suffix(self.receiver_suffix, z, x if receiver_input is None else receiver_input)


@dataclass
class StitchConfig:
    """How a stitch is trained. Defaults after Bansal et al. (Adam, lr 1e-3, cosine decay,
    batch 128), except that the stitch starts from least squares so few epochs are needed."""

    family: str = "auto"
    objective: str = "task"
    init: str = "lstsq"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    init_samples: int = 2048
    family_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise StitchError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.init not in INITS:
            raise StitchError(f"unknown init {self.init!r}; choose from {INITS}")
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0:
            raise StitchError("epochs must be ≥ 0, batch size ≥ 2 and lr > 0")

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "objective": self.objective,
            "init": self.init,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "init_samples": self.init_samples,
            "family_options": self.family_options,
        }


@dataclass
class ActSplit:
    """One split seen from a stitch: sender activations, labels, and (when needed) the receiver's
    activations at its cut (``target``) and the receiver's inputs (``context``)."""

    sender: object  # ActivationStore or Tensor: anything with take(idx) / indexing
    labels: torch.Tensor
    target: object | None = None
    context: torch.Tensor | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes is None:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, store, idx: torch.Tensor) -> torch.Tensor:
        return take(store, idx)


def logits_of(output) -> torch.Tensor:
    """The classifier output of a model: the tensor itself, or the first tensor it returns."""
    if isinstance(output, torch.Tensor):
        return output
    tensors = _flat_tensors(output)
    if not tensors:
        raise StitchError("the receiver returns no tensor to classify with")
    return tensors[0]


def initialise(
    stitch: nn.Module,
    family: StitchFamily,
    cfg: StitchConfig,
    sample: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Apply ``cfg.init``: ``lstsq`` fits the family's closed form on (sender, receiver)
    activation samples, ``identity`` asks the family for an identity map, ``random`` keeps the
    fresh module's initialisation."""
    if cfg.init == "random" and family.trainable:
        return
    if cfg.init == "identity":
        family.init_identity(stitch)
        return
    if sample is None:
        raise StitchError(f"init {cfg.init!r} needs receiver activations")
    with torch.no_grad():
        family.init(stitch, *sample)


def _batches(n: int, size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, size):
        idx = order[start : start + size]
        if gen is not None and len(idx) < 2:
            continue  # BatchNorm cannot train on a single sample
        yield idx


def train_stitch(
    stitch: nn.Module,
    family: StitchFamily,
    suffix: nn.Module,
    data: ActSplit,
    cfg: StitchConfig,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train the stitch with Adam + cosine decay; return the mean loss of each epoch."""
    params = [p for p in stitch.parameters() if p.requires_grad]
    if not family.trainable or not params or cfg.epochs == 0:
        return []
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    stitch.train()
    history, step = [], 0
    for _ in range(cfg.epochs):
        losses = []
        for idx in _batches(len(data), cfg.batch_size, gen):
            loss = _loss(stitch, suffix, data, idx, cfg.objective)
            if not torch.isfinite(loss):
                raise DivergedError(f"stitch loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if on_step:
                on_step(step, total, losses[-1])
        history.append(sum(losses) / max(1, len(losses)))
    stitch.eval()
    return history


def _loss(stitch, suffix, data: ActSplit, idx, objective: str) -> torch.Tensor:
    z = stitch(data.take(data.sender, idx))
    if objective == "match":
        return F.mse_loss(z, data.take(data.target, idx))
    ctx = data.context[idx] if data.context is not None else None
    return F.cross_entropy(logits_of(run_suffix(suffix, z, ctx)), data.labels[idx])


@torch.no_grad()
def evaluate_stitch(
    stitch: nn.Module, suffix: nn.Module, data: ActSplit, batch_size: int = 256
) -> dict:
    """Stitched accuracy and cross-entropy on a split (None when the receiver's output is not a
    classifier over these labels), plus the matching MSE when the receiver's activations are
    there."""
    stitch.eval()
    correct, total, loss_sum, mse_sum, fits = 0, 0, 0.0, 0.0, True
    for idx in _batches(len(data), batch_size, None):
        z = stitch(data.take(data.sender, idx))
        ctx = data.context[idx] if data.context is not None else None
        logits = logits_of(run_suffix(suffix, z, ctx))
        y = data.labels[idx]
        fits = fits and head_fits(logits, data.num_classes)
        if fits:
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        if data.target is not None:
            per_sample = F.mse_loss(z, data.take(data.target, idx), reduction="sum") / z[0].numel()
            mse_sum += per_sample.item()
        total += len(idx)
    out = {
        "accuracy": correct / total if fits else None,
        "loss": loss_sum / total if fits else None,
    }
    if data.target is not None:
        out["match_mse"] = mse_sum / total
    return out


def head_fits(logits: torch.Tensor, num_classes: int) -> bool:
    """Whether a model output can be read as class scores for a task with ``num_classes``."""
    return logits.dim() == 2 and logits.shape[1] == num_classes
