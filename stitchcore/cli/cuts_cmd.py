"""``stitch cuts MODEL``: list where a model can be cut."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..cuts import Cutter
from ..sources import load_model, parse_spec
from .main import cli, err_console

__all__ = ["CHECKPOINT_SUFFIXES", "architecture_spec", "cuts_command"]


# names ending like this are checkpoint files, existing or not (a hub id or a directory is not)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".torch", ".bin", ".ckpt", ".pkl", ".safetensors")


def architecture_spec(model: str) -> str:
    """The spec to load for a command that needs only the architecture: ``@random`` added to a
    spec without ``@WEIGHTS`` (no download), except when its name is a local checkpoint file
    (``vissl:PATH``): that file *is* the model, read locally, and takes no ``@WEIGHTS`` (a
    missing one is then reported as missing, not as ``PATH@random``)."""
    if "@" in model:
        return model
    path = Path(parse_spec(model).name).expanduser()
    if path.is_file() or (not path.is_dir() and path.suffix in CHECKPOINT_SUFFIXES):
        return model
    return model + "@random"


@cli.command("cuts")
@click.argument("model")
@click.option("--all", "all_", is_flag=True, help="Every valid node, not only block boundaries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def cuts_command(model: str, all_: bool, as_json: bool) -> None:
    """List the cuts of MODEL (SOURCE:NAME[@WEIGHTS]) with their activation shapes.

    Listing cuts only builds the architecture: a spec without @WEIGHTS uses @random (a local
    checkpoint file, as in vissl:PATH, is read as it is).

    \b
    Examples:
      stitch cuts timm:resnet18
      stitch cuts timm:vit_tiny_patch16_224@random --all --json
    """
    loaded = load_model(architecture_spec(model))
    cutter = Cutter(loaded)
    cuts = cutter.cuts(all=all_)
    skipped = getattr(cutter.backend, "skipped", [])
    if as_json:
        click.echo(json.dumps({"model": model, "cuts": [c.to_json() for c in cuts]}, indent=2))
    else:
        table = Table(title=f"cuts of {model}" + (" (all)" if all_ else ""))
        for col in ("#", "name", "node", "shape", "layout"):
            table.add_column(col)
        for i, c in enumerate(cuts):
            layout = c.spec.layout
            if layout == "tokens":
                layout += f" ({c.spec.prefix_tokens} prefix)"
            shape = "×".join(map(str, c.spec.shape))
            table.add_row(str(i), c.name, c.node if c.node != c.name else "", shape, layout)
        Console().print(table)
    for note in skipped:
        err_console.print(f"[yellow]skipped default cut[/] {note}")
    if not cuts:
        err_console.print(
            f"[red]{model} has no valid cut[/]: no point where a single tensor carries "
            "everything the rest of the model needs"
        )
