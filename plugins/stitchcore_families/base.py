"""What the standard families share: option checking and refusing pairs with a reason."""

from __future__ import annotations

from typing import Any

from torch import nn

from stitchcore.plugin import ActivationSpec, StitchError, StitchFamily

#: Ridge of the closed-form inits, relative to the mean variance of the (normalised) input.
#: Small enough not to matter when the fit is well determined; it keeps a fit on a few hundred
#: samples from interpolating noise, and keeps weights from cancelling each other so that the
#: BatchNorm batch-statistics noise of train mode is not amplified. ``ridge=0`` fits exactly.
DEFAULT_RIDGE = 1e-4

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def as_bool(name: str, value: Any) -> bool:
    """A boolean option given as a bool or as command-line text (``true``/``false``/``1``/``0``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise StitchError(f"option {name}={value!r}: expected true or false")


def as_ridge(value: Any) -> float:
    """The ``ridge`` option: a number ≥ 0 (text from the command line is accepted)."""
    try:
        ridge = float(value)
    except (TypeError, ValueError):
        ridge = -1.0
    if not ridge >= 0:
        raise StitchError(f"option ridge={value!r}: expected a number ≥ 0")
    return ridge


def as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value)
    if text not in choices:
        raise StitchError(f"option {name}={value!r}: choose from {', '.join(choices)}")
    return text


class Family(StitchFamily):
    """A StitchFamily whose ``build`` checks the pair and its options before building.

    ``options`` lists the build options with their defaults; unknown options are an error
    (a typo on the command line must not be ignored silently).
    """

    options: dict[str, Any] = {}

    def parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise StitchError(
                f"family {self.name!r} has no option {', '.join(unknown)} (options: {known})"
            )
        return {**self.options, **options}

    def check_pair(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> None:
        reason = self.accepts(sender, receiver, **options)
        if reason is not None:
            raise StitchError(
                f"family {self.name!r} cannot stitch {sender.describe()} → "
                f"{receiver.describe()}: {reason}"
            )

    def accepts(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> str | None:
        raise NotImplementedError

    def build(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> nn.Module:
        opts = self.parse_options(options)
        self.check_pair(sender, receiver, **opts)
        return self.make(sender, receiver, **opts)

    def make(self, sender: ActivationSpec, receiver: ActivationSpec, **options) -> nn.Module:
        """Build the module for an accepted pair with parsed options."""
        raise NotImplementedError

    def check_stitch(self, stitch: nn.Module, cls: type) -> None:
        if not isinstance(stitch, cls):
            raise StitchError(
                f"family {self.name!r} cannot initialise a {type(stitch).__name__} "
                f"(it builds {cls.__name__})"
            )
