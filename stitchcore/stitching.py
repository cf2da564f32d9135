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
    #: at least this many epochs for a stitch that learns from scratch (see :meth:`epochs_for`)
    unsolved_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise StitchError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.init not in INITS:
            raise StitchError(f"unknown init {self.init!r}; choose from {INITS}")
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0:
            raise StitchError("epochs must be ≥ 0, batch size ≥ 2 and lr > 0")
        if self.unsolved_epochs is not None and self.unsolved_epochs < 0:
            raise StitchError(f"unsolved epochs must be ≥ 0, got {self.unsolved_epochs}")

    def epochs_for(self, solved: bool) -> int:
        """Epochs of one stitch: ``epochs``, or at least ``unsolved_epochs`` for a stitch that
        learns from scratch (random init, or a closed form that does not :func:`starts_solved`):
        a least-squares stitch is fine after one epoch where it fits, while one whose closed form
        is at chance needs the many epochs of Bansal et al.'s recipe."""
        if solved or self.unsolved_epochs is None:
            return self.epochs
        return max(self.epochs, self.unsolved_epochs)

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
            # only when set: configurations (and result directories) from before it stay valid
            **(
                {"unsolved_epochs": self.unsolved_epochs}
                if self.unsolved_epochs is not None
                else {}
            ),
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
    scratch: dict | None = None,
) -> list[float]:
    """Train the stitch with Adam + cosine decay; return the mean loss of each epoch.

    ``scratch``: the stitch's random-init state; with ``cfg.unsolved_epochs`` set, a closed
    form that does not start solved is replaced by it (learning from scratch, as the matrix
    does)."""
    params = [p for p in stitch.parameters() if p.requires_grad]
    if not family.trainable or not params:
        return []
    solved = _starts_solved(stitch, suffix, data, cfg)
    restart_unsolved(stitch, scratch, cfg, solved)
    epochs = cfg.epochs_for(solved)
    if epochs == 0:
        return []
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = epochs * steps_per_epoch
    opt, sched = optimizer([stitch], cfg, [total], [solved])
    stitch.train()
    history, step = [], 0
    for _ in range(epochs):
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


#: Fan-in at which a fine-tuned weight gets the full ``lr`` (see :func:`param_groups`).
FINE_TUNE_FAN_IN = 64
#: Fraction of the steps over which the lr ramps up linearly when fine-tuning (see :func:`optimizer`).
FINE_TUNE_WARMUP = 0.25
#: Training samples :func:`starts_solved` looks at (in eval mode, without a step).
FIRST_LOOK = 128


def param_groups(stitches: list[nn.Module], lrs: list[float]) -> list[dict]:
    """Adam parameter groups, one per parameter (Adam is per-parameter, so one optimiser over many
    stitches equals one per stitch); ``lrs[k]`` is stitch k's lr: a number, or a function of
    the parameter (:func:`fine_tune_lr`)."""
    groups = []
    for stitch, lr in zip(stitches, lrs):
        for p in stitch.parameters():
            if p.requires_grad:
                groups.append({"params": [p], "lr": lr(p) if callable(lr) else lr})
    return groups


def fine_tune_lr(lr: float):
    """The lr of each parameter of a stitch that starts solved (see :func:`optimizer`)."""
    return lambda p: lr * min(1.0, FINE_TUNE_FAN_IN / (p[0].numel() or 1)) if p.dim() >= 2 else lr


def scratch_state(module: nn.Module, cfg: StitchConfig) -> dict | None:
    """A copy of a freshly built stitch's state (its random init), kept when
    ``cfg.unsolved_epochs`` may need it (:func:`restart_unsolved`); None otherwise."""
    if cfg.unsolved_epochs is None:
        return None
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def restart_unsolved(
    stitch: nn.Module, scratch: dict | None, cfg: StitchConfig, solved: bool
) -> bool:
    """Put a closed-form stitch that does not start solved back to its random init
    (``scratch``); True when it did. A closed form no better than chance is a poor start (its
    loss is often far above chance), so with ``unsolved_epochs`` it learns from scratch, as
    under ``--init random``."""
    if solved or scratch is None or cfg.init == "random":
        return False
    stitch.load_state_dict(scratch)
    return True


def starts_solved(cfg: StitchConfig, loss: float, num_classes: int) -> bool:
    """Whether a stitch fine-tunes a solution rather than learns from scratch: a closed-form
    init (``lstsq``, ``identity``) whose loss on a first look at the training data is below half
    the chance level (``ln C / 2``); with the ``match`` objective any closed-form init."""
    if cfg.init == "random":
        return False
    return cfg.objective == "match" or loss < 0.5 * math.log(max(2, num_classes))


def optimizer(
    stitches: list[nn.Module], cfg: StitchConfig, total_steps: list[int], solved: list[bool]
):
    """Adam with cosine decay to 0 over each stitch's ``total_steps``.

    A stitch that learns from scratch gets ``cfg.lr`` everywhere (Bansal et al.'s recipe). One
    that :func:`starts_solved` is fine-tuned, and Adam's first steps move every weight by about
    the lr in the gradient's sign direction whatever the gradient's size, which changes an output
    by about ``lr × fan_in``: a 1,024-wide strided-conv patch at lr 1e-3 throws a 96 % stitch
    back to 40 % in one epoch. Its weights (tensors of ≥ 2 dims) therefore get
    ``lr × min(1, 64 / fan_in)`` (Adam's lr scaling with width, as in μP, Yang et al. 2022;
    biases and BatchNorm parameters keep ``lr``), and the lr ramps up linearly over the first
    quarter of the steps. Measured on digits (ResNet-18 → ResNet-34, 1 epoch, docs/matrix.md):
    good closed-form stitches stay where they are or improve (96 % → 97 %), poor ones still
    train (77 % → 97 %), and stitches whose least-squares init is at chance (upsampling cells)
    keep the full lr they need.
    """
    lrs = [fine_tune_lr(cfg.lr) if ok else cfg.lr for ok in solved]
    opt = torch.optim.Adam(param_groups(stitches, lrs), lr=cfg.lr)
    # one schedule per parameter group, following its stitch's length and warm-up
    per_group = [
        (max(1, total), int(FINE_TUNE_WARMUP * total) if ok else 0)
        for stitch, total, ok in zip(stitches, total_steps, solved)
        for p in stitch.parameters()
        if p.requires_grad
    ]

    def schedule(total: int, warm_steps: int):
        def factor(s: int) -> float:
            ramp = min(1.0, (s + 1) / (warm_steps + 1))
            return ramp * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))

        return factor

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [schedule(*g) for g in per_group])
    return opt, sched


@torch.no_grad()
def _starts_solved(stitch, suffix, data: ActSplit, cfg: StitchConfig) -> bool:
    if cfg.init == "random":
        return False
    stitch.eval()
    idx = torch.arange(min(len(data), FIRST_LOOK))
    loss = float(_loss(stitch, suffix, data, idx, cfg.objective))
    return starts_solved(cfg, loss, int(data.labels.max()) + 1)


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
