"""``stitch cuts MODEL``: list where a model can be cut."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..cuts import Cutter
from ..sources import load_model
from .main import cli, err_console


@cli.command("cuts")
@click.argument("model")
@click.option("--all", "all_", is_flag=True, help="Every valid node, not only block boundaries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def cuts_command(model: str, all_: bool, as_json: bool) -> None:
    """List the cuts of MODEL (SOURCE:NAME[@WEIGHTS]) with their activation shapes.

    Listing cuts only builds the architecture: no weights are needed (use @random).

    \b
    Examples:
      stitch cuts timm:resnet18
      stitch cuts timm:vit_tiny_patch16_224@random --all --json
    """
    spec = model if "@" in model else model + "@random"
    loaded = load_model(spec)
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
