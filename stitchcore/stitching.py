"""The stitched model, how a stitch is configured, and the rules its training follows.

Sender prefix and receiver suffix are frozen: eval mode, no gradients, and their parameters and
buffers are checked unchanged after training (:class:`FrozenGuard`: a changed BatchNorm running
mean is an error, not a footnote). The training loop itself is :mod:`stitchcore.trainer` (one
trainer for pairs and matrices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .cuts import run_suffix
from .errors import StitchError
from .families import StitchFamily
from .graph import flat_tensors

__all__ = [
    "FINE_TUNE_FAN_IN",
    "FINE_TUNE_WARMUP",
    "FIRST_LOOK",
    "INITS",
    "OBJECTIVES",
    "DivergedError",
    "FrozenGuard",
    "FrozenModelError",
    "StitchConfig",
    "StitchedModel",
    "at_chance",
    "base_lrs",
    "cosine",
    "freeze",
    "head_fits",
    "initialise",
    "logits_selector",
    "scratch_state",
    "starts_solved",
]

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

    @torch.no_grad()
    def restore(self) -> None:
        """Put the snapshot back (after a failed check, so later work uses the true models)."""
        for name, module in self.modules.items():
            module.load_state_dict(self.snapshots[name])


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
    """How a stitch is trained. Defaults after Bansal et al. (Adam, lr 1e-3, batch 128), except
    that the stitch starts from least squares and trains until its validation loss plateaus
    (``epochs=None``; ``max_epochs`` caps it). ``epochs=N`` trains exactly N epochs with cosine
    decay instead (reported as not converged). See :mod:`stitchcore.trainer`."""

    family: str = "auto"
    objective: str = "task"
    init: str = "lstsq"
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    init_samples: int = 2048
    family_options: dict = field(default_factory=dict)
    #: at least this many epochs for a stitch that learns from scratch (random init, or a
    #: closed form at chance) before a plateau may end it
    unsolved_epochs: int | None = None
    max_epochs: int = 30
    patience: int = 2
    #: fraction of the training split held out to decide convergence (never the test split)
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise StitchError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        if self.init not in INITS:
            raise StitchError(f"unknown init {self.init!r}; choose from {INITS}")
        if self.epochs is not None and self.epochs < 0:
            raise StitchError(f"--epochs must be ≥ 0, got {self.epochs}")
        if self.batch_size < 2:
            raise StitchError(f"--batch-size must be ≥ 2, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise StitchError(f"--lr must be a positive finite number, got {self.lr}")
        if self.unsolved_epochs is not None and self.unsolved_epochs < 0:
            raise StitchError(f"--unsolved-epochs must be ≥ 0, got {self.unsolved_epochs}")
        if self.max_epochs < 1 or self.patience < 1:
            raise StitchError("--max-epochs and --patience must be ≥ 1")
        if not 0 < self.val_fraction < 1:
            raise StitchError(f"validation fraction must be in (0, 1), got {self.val_fraction}")
        if self.init_samples < 1:
            raise StitchError(f"init samples must be ≥ 1, got {self.init_samples}")

    @property
    def converges(self) -> bool:
        """Whether stitches train until a plateau (rather than a fixed number of epochs)."""
        return self.epochs is None

    def to_json(self) -> dict:
        out = {
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
        if self.unsolved_epochs is not None:
            out["unsolved_epochs"] = self.unsolved_epochs
        if self.converges:
            out.update(
                max_epochs=self.max_epochs, patience=self.patience, val_fraction=self.val_fraction
            )
        return out


def logits_selector(logits: str | int | Callable | None = None) -> Callable:
    """How to read class scores from a model's output.

    ``logits`` None: a tensor output is the logits; a mapping (dict, ``ModelOutput``) is read at
    its ``logits`` key; a tuple/list of one tensor is that tensor. Anything else is ambiguous and
    refused: the engine never guesses which output is the classifier (a dict with ``features``
    before ``logits`` once trained stitches on the features). A key (str), an index (int) or a
    callable (output → tensor) says which.
    """

    def select(output):
        if callable(logits):
            return logits(output)
        if logits is not None:
            try:
                return output[logits]
            except (KeyError, IndexError, TypeError) as exc:
                raise StitchError(
                    f"logits={logits!r} does not select an output of a model returning "
                    f"{_describe(output)}"
                ) from exc
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, Mapping):
            if isinstance(output.get("logits"), torch.Tensor):
                return output["logits"]
        elif isinstance(output, (tuple, list)):
            tensors = flat_tensors(output)
            if len(tensors) == 1:
                return tensors[0]
        raise StitchError(
            f"the model returns {_describe(output)}: say which output is the logits "
            "(logits=KEY, INDEX or a function)"
        )

    return select


def _describe(output) -> str:
    if isinstance(output, Mapping):
        return f"a mapping with keys {list(output)}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} values"
    return type(output).__name__


def initialise(
    stitch: nn.Module,
    family: StitchFamily,
    cfg: StitchConfig,
    sample: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Apply ``cfg.init``: ``lstsq`` fits the family's closed form on (sender, receiver)
    activation samples (in fp32/fp64 whatever the run's precision), ``identity`` asks the family
    for an identity map, ``random`` keeps the fresh module's initialisation."""
    if cfg.init == "random" and family.trainable:
        return
    if cfg.init == "identity":
        family.init_identity(stitch)
        return
    if sample is None:
        raise StitchError(f"init {cfg.init!r} needs receiver activations")
    with torch.no_grad():
        family.init(stitch, sample[0].float(), sample[1].float())


#: Fan-in at which a fine-tuned weight gets the full ``lr`` (see :func:`base_lrs`).
FINE_TUNE_FAN_IN = 64
#: Fraction of the steps over which the lr ramps up linearly when fine-tuning.
FINE_TUNE_WARMUP = 0.25
#: Training samples :func:`starts_solved` looks at (in eval mode, without a step).
FIRST_LOOK = 128


def base_lrs(params: list[torch.Tensor], lr: float, fine_tuned: bool) -> list[float]:
    """The learning rate of each parameter of a stitch.

    A stitch that learns from scratch gets ``lr`` everywhere (Bansal et al.'s recipe). One that
    :func:`starts_solved` is fine-tuned, and Adam's first steps move every weight by about the lr
    in the gradient's sign direction whatever the gradient's size, which changes an output by
    about ``lr × fan_in``: a 1,024-wide strided-conv patch at lr 1e-3 throws a 96 % stitch back
    to 40 % in one epoch. Its weights (tensors of ≥ 2 dims) therefore get
    ``lr × min(1, 64 / fan_in)`` (Adam's lr scaling with width, as in μP, Yang et al. 2022;
    biases and BatchNorm parameters keep ``lr``), and the trainer ramps the lr up over the first
    quarter of its steps.
    """
    if not fine_tuned:
        return [lr] * len(params)
    return [
        lr * min(1.0, FINE_TUNE_FAN_IN / (p[0].numel() or 1)) if p.dim() >= 2 else lr
        for p in params
    ]


def cosine(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over ``total`` steps."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def scratch_state(module: nn.Module) -> dict:
    """A copy of a freshly built stitch's state (its random init), for a from-scratch restart
    when its closed form does not start solved."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def starts_solved(cfg: StitchConfig, loss: float, num_classes: int) -> bool:
    """Whether a stitch fine-tunes a solution rather than learns from scratch: a closed-form
    init (``lstsq``, ``identity``) whose loss on a first look at the training data is below half
    the chance level (``ln C / 2``); with the ``match`` objective any closed-form init."""
    if cfg.init == "random":
        return False
    return cfg.objective == "match" or loss < 0.5 * math.log(max(2, num_classes))


def at_chance(accuracy: float, samples: int, num_classes: int) -> bool:
    """Whether a closed-form stitch's accuracy on a first look at ``samples`` training samples
    is no better than guessing: within three binomial standard deviations of ``1 / C``. Only
    such a stitch is restarted from its random init; one that is above chance but not
    :func:`starts_solved` keeps its closed form and trains at the full lr."""
    p = 1.0 / max(2, num_classes)
    return accuracy <= p + 3.0 * math.sqrt(p * (1 - p) / max(1, samples))


def head_fits(logits: torch.Tensor, num_classes: int) -> bool:
    """Whether a model output can be read as class scores for a task with ``num_classes``."""
    return logits.dim() == 2 and logits.shape[1] == num_classes
