"""Options shared by several commands: one declaration of the stitch options for ``pair`` and
``matrix`` (same names, same defaults), and of the device options for every command that
computes."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from ..errors import StitchError
from ..runtime import DEVICES, PRECISIONS
from ..stitching import INITS, OBJECTIVES, StitchConfig

__all__ = [
    "SEED_MAX",
    "data_options",
    "device_options",
    "family_option",
    "parse_family_options",
    "stitch_config",
    "stitch_options",
]

#: The largest seed: every generator the engine seeds (torch, numpy) takes 0 … 2³² − 1.
SEED_MAX = 2**32 - 1

family_option = click.option(
    "--family-option",
    "family_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the stitch family's build (repeatable), e.g. rank=8 or prefix=pool.",
)


def parse_family_options(pairs: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` strings to a dict; values are read as JSON when they parse (numbers,
    booleans), else kept as strings (the family checks them before any training)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StitchError(f"--family-option must look like KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


stitch_options = _stack(
    click.option("--family", default="auto", show_default=True, help="Stitch family, or auto."),
    family_option,
    click.option("--objective", type=click.Choice(OBJECTIVES), default="task", show_default=True,
                 help="task: the receiver's labels; match: the receiver's own activation."),
    click.option("--init", "init", type=click.Choice(INITS), default="lstsq", show_default=True),
    click.option("--epochs", type=click.IntRange(min=0), default=None,
                 help="Train exactly N epochs (cosine decay; reported as not converged) "
                      "[default: until the validation loss plateaus].")  ,
    click.option("--max-epochs", type=click.IntRange(min=1), default=30, show_default=True,
                 help="Cap on epochs when training until converged."),
    click.option("--unsolved-epochs", type=click.IntRange(min=0), default=None,
                 help="At least N epochs for stitches their closed form does not solve (random "
                      "init, or a least-squares init not solved) before a plateau may end them."),
    click.option("--batch-size", type=int, default=128, show_default=True),
    click.option("--lr", type=float, default=1e-3, show_default=True),
    click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True),
)  # fmt: skip

data_options = _stack(
    click.option("--data", default="digits", show_default=True, help="Dataset NAME[:VARIANT]."),
    click.option("--train-size", type=int, default=None, help="Use N training samples."),
    click.option("--test-size", type=int, default=None, help="Use N test samples."),
    click.option("--input-size", type=int, default=None,
                 help="Run image models at N×N px [default: each model's own size; base "
                      "models trained here at 32 px for small images]."),
)  # fmt: skip

device_options = _stack(
    click.option("--device", default="auto", show_default=True, help=f"{DEVICES}."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                 help="Autocast for frozen passes and stitch training (least squares stays fp32)."),
)  # fmt: skip


def stitch_config(opts: dict) -> StitchConfig:
    """The StitchConfig of the shared stitch options."""
    return StitchConfig(
        family=opts["family"],
        objective=opts["objective"],
        init=opts["init"],
        epochs=opts["epochs"],
        max_epochs=opts["max_epochs"],
        unsolved_epochs=opts["unsolved_epochs"],
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        seed=opts["seed"],
        family_options=parse_family_options(opts["family_options"]),
    )
