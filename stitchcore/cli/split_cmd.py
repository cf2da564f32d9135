"""``stitch split MODEL CUT``: what one cut name resolves to, and proof that it splits.

``stitch cuts`` lists cut names; this command answers "what is this one, exactly?" for a name
the user types: the graph node it resolves to, the activation spec, the size of each half, and
the result of checking ``suffix(prefix(x)) == model(x)``. An invalid cut fails with the reason
(the values that cross it), an unknown one with the closest valid names.
"""

from __future__ import annotations

import json

import click
import torch

from ..cuts import Cutter, batch_size, recomposes, resize_batch
from ..sources import load_model
from .cuts_cmd import architecture_spec
from .main import cli

__all__ = ["split_command"]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@cli.command("split")
@click.argument("model")
@click.argument("cut")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def split_command(model: str, cut: str, as_json: bool) -> None:
    """Split MODEL (SOURCE:NAME[@WEIGHTS]) at CUT and check that the halves recompose.

    CUT is a module path (layer2, blocks.5) or a node name from `stitch cuts MODEL --all`.
    Only the architecture is needed: a model spec without @WEIGHTS uses @random (a local
    checkpoint file, as in vissl:PATH, is read as it is).

    \b
    Examples:
      stitch split timm:resnet18 layer2
      stitch split timm:resnet18 layer1.0.add --json
    """
    cutter = Cutter(load_model(architecture_spec(model)))
    resolved = cutter.resolve(cut)
    prefix, suffix = cutter.split(resolved)  # raises CutError if they do not recompose
    batch = batch_size(cutter.example)
    other = resize_batch(cutter.example, batch + 1)
    expected = cutter.reference(other)
    info = {
        "model": model,
        **resolved.to_json(),
        "prefix_parameters": _params(prefix),
        "suffix_parameters": _params(suffix),
        "recomposes": True,
        "recomposes_other_batch": recomposes(prefix, suffix, other, expected),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    node = f" (node {resolved.node})" if resolved.node != resolved.name else ""
    click.echo(
        f"{model} cut {resolved.name}{node}: {resolved.spec.describe()}, {resolved.spec.dtype}"
    )
    click.echo(
        f"prefix {info['prefix_parameters']:,} parameters, suffix "
        f"{info['suffix_parameters']:,} parameters; suffix(prefix(x)) == model(x): yes "
        f"(batch {batch}), "
        + ("yes" if info["recomposes_other_batch"] else "NO")
        + f" (batch {batch + 1})"
    )
