"""``stitch plugins``: what is installed and what each plugin registered.

On a terminal a table; piped, plain aligned text with every name in full (see
:func:`~stitchcore.cli.tables.print_table`); ``--json`` for programs.
"""

from __future__ import annotations

import json

import click

from .. import plugins
from .main import cli
from .tables import print_table

__all__ = ["plugins_command"]


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
    table = []
    for r in rows:
        registered = "; ".join(
            f"{kind}: {', '.join(r[kind])}"
            for kind in ("families", "sources", "datasets")
            if r[kind]
        )
        table.append([r["name"], r["package"], ", ".join(r["hooks"]), registered or "-"])
    print_table(("plugin", "package", "hooks", "registered"), table, title="stitchcore plugins")
