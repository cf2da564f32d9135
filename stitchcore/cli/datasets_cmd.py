"""``stitch datasets``: every registered dataset, whether it can be loaded here, and its sizes."""

from __future__ import annotations

import json

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import plugins
from ..errors import StitchError
from .main import cli


def dataset_rows() -> list[dict]:
    """One row per registered dataset: owner, availability (or why not), variants, sizes.

    Sizes come from loading the default variant (decoded arrays are cached, so this is quick);
    a dataset that needs a variant (a path, a shape) says so in ``note`` instead.
    """
    owners = {d: r["name"] for r in plugins.plugin_report() for d in r["datasets"]}
    rows = []
    for name, ds in sorted(plugins.datasets().items()):
        reason = ds.unavailable()
        row: dict = {
            "name": name,
            "plugin": owners.get(name),
            "description": ds.description,
            "available": reason is None,
            "reason": reason,
            "variants": list(ds.variants),
            "coarse_classes": list(getattr(ds, "coarse_classes", ()) or ()),
            "train": None,
            "test": None,
            "classes": None,
            "image_shape": None,
            "note": None,
        }
        if reason is None:
            try:
                splits = ds.load(None)
            except StitchError as exc:
                row["note"] = str(exc)
            else:
                row.update(
                    train=len(splits.train_y),
                    test=len(splits.test_y),
                    classes=splits.num_classes,
                    image_shape=list(splits.image_shape),
                )
        rows.append(row)
    return rows


@cli.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def datasets_command(as_json: bool) -> None:
    """List every registered dataset: available here or why not, variants and sizes.

    Use a dataset as --data NAME or --data NAME:VARIANT.

    \b
    Examples:
      stitch datasets
      stitch datasets --json
    """
    rows = dataset_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="stitchcore datasets", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "here", "train/test", "classes", "image"):
        table.add_column(col, no_wrap=True)
    table.add_column("variants", min_width=12, overflow="fold")
    table.caption = "classes (k): k superclasses with --coarse"
    notes = []
    for r in rows:
        if r["train"] is not None:
            sizes = f"{r['train']}/{r['test']}"
            image = "×".join(map(str, r["image_shape"]))
            classes = str(r["classes"]) + (
                f" ({len(r['coarse_classes'])})" if r["coarse_classes"] else ""
            )
        else:
            sizes, image, classes = "-", "-", "-"
        if not r["available"]:
            status = "[red]no[/]"
            notes.append(f"[bold]{r['name']}[/] unavailable: {escape(r['reason'])}")
        elif r["note"]:
            status = "with :ARG"
            notes.append(escape(r["note"]))
        else:
            status = "[green]yes[/]"
        variants = escape(", ".join(r["variants"]) or "-")
        table.add_row(r["name"], status, sizes, classes, image, variants)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)
