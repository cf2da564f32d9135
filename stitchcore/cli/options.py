"""Options shared by several commands."""

from __future__ import annotations

import json

import click

from ..errors import StitchError

family_option = click.option(
    "--family-option",
    "family_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the stitch family's build (repeatable), e.g. rank=8 or prefix=pool.",
)


def parse_family_options(pairs: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` strings to a dict; values are read as JSON when they parse (numbers,
    booleans), else kept as strings."""
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
