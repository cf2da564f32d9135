"""``stitch plugins``: what is installed and what each plugin registered."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from .. import plugins
from .main import cli


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def plugins_command(as_json: bool) -> None:
    """List every loaded plugin with the families, sources and datasets it registered.

    \b
    Examples:
      stitch plugins
      STITCHCORE_PLUGINS=timm stitch plugins --json
    """
    rows = plugins.plugin_report()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="stitchcore plugins")
    for col in ("plugin", "package", "hooks", "registered"):
        table.add_column(col)
    for r in rows:
        registered = "; ".join(
            f"{kind}: {', '.join(r[kind])}"
            for kind in ("families", "sources", "datasets")
            if r[kind]
        )
        table.add_row(r["name"], r["package"], ", ".join(r["hooks"]), registered or "-")
    Console().print(table)
