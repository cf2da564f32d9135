"""The stitch-family contract and the ``auto`` choice.

A family turns a (sender spec, receiver spec) pair into a small trainable module that maps the
sender's activation at its cut to what the receiver expects at its cut. Families are registered
by plugins (``register_stitch_families``); the core ships none.
"""

from __future__ import annotations

import torch
from torch import nn

from . import plugins
from .errors import StitchError
from .spec import ActivationSpec


class StitchFamily:
    """Base class for stitch families.

    Attributes:
      name: used on the command line (``--family NAME``).
      description: one line for ``stitch plugins``.
      trainable: False for closed-form families (e.g. permutation) that gradient training skips.
      auto_priority: order in which ``auto`` tries families (lower first); None = never auto.

    Methods to implement: ``accepts`` and ``build``; optionally ``init`` (closed-form fit from
    activations, used by ``--init lstsq``) and ``init_identity``.
    """

    name: str = ""
    description: str = ""
    trainable: bool = True
    auto_priority: int | None = None

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec) -> str | None:
        """None if this family can stitch the pair, else the reason it cannot (one line)."""
        raise NotImplementedError

    def build(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> nn.Module:
        """A fresh stitch module: batched sender activation in, batched receiver activation out."""
        raise NotImplementedError

    def init(self, stitch: nn.Module, sender_acts: torch.Tensor, receiver_acts: torch.Tensor):
        """Closed-form fit from paired activations (batched). Families without one raise."""
        raise StitchError(f"family {self.name!r} has no closed-form (lstsq) init")

    def init_identity(self, stitch: nn.Module) -> None:
        """Make the stitch the identity map, where the shapes allow; otherwise raise."""
        raise StitchError(f"family {self.name!r} has no identity init")

    @property
    def has_closed_form(self) -> bool:
        return type(self).init is not StitchFamily.init


def accepting(sender: ActivationSpec, receiver: ActivationSpec) -> list[str]:
    """Names of the registered families that can stitch this pair."""
    return [n for n, f in plugins.families().items() if f.accepts(sender, receiver) is None]


def resolve_family(
    name: str, sender: ActivationSpec, receiver: ActivationSpec
) -> tuple[StitchFamily, str]:
    """The family to use for a pair, and a sentence saying why it was chosen.

    ``auto`` tries families in ``auto_priority`` order. A named family that refuses the pair
    raises StitchError with its reason and the families that can.
    """
    pair = f"{sender.describe()} → {receiver.describe()}"
    if name == "auto":
        ranked = sorted(
            (f for f in plugins.families().values() if f.auto_priority is not None),
            key=lambda f: (f.auto_priority, f.name),
        )
        for fam in ranked:
            if fam.accepts(sender, receiver) is None:
                return fam, f"auto chose {fam.name!r} for {pair}"
        raise StitchError(f"no stitch family can stitch {pair}")
    family = plugins.get_family(name)
    reason = family.accepts(sender, receiver)
    if reason is not None:
        can = accepting(sender, receiver)
        raise StitchError(
            f"family {name!r} cannot stitch {pair}: {reason}; "
            + (f"families that can: {', '.join(can)}" if can else "no family can")
        )
    return family, f"family {name!r} requested"


__all__ = [
    "StitchFamily",
    "accepting",
    "resolve_family",
]
