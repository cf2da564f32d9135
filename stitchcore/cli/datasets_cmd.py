"""``stitch datasets``: every registered dataset, whether it can be loaded here, and its sizes.

On a terminal the list is a rich table; piped (``stitch datasets | grep …``) it is plain text
lines with full names and no styling, one dataset per line, columns padded to their widest entry,
so nothing is cut or wrapped at 80 columns.
"""

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

__all__ = ["dataset_rows", "datasets_command", "plain_lines"]

COLUMNS = ("name", "here", "train/test", "classes", "input", "variants")


def dataset_rows() -> list[dict]:
    """One row per registered dataset: owner, availability (or why not), variants, sizes.

    Sizes come from loading the default variant (decoded arrays are cached and lazy sources are
    only listed, so this is quick); a dataset that needs a variant (a path, a shape) says so in
    ``note`` instead. ``kind`` is ``image``, ``lazy`` or ``text``; ``image_shape`` is None for
    text (and, for lazy sources, the first image's: sizes may vary).
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
            "kind": None,
            "train": None,
            "test": None,
            "classes": None,
            "image_shape": None,
            "note": None,
        }
        if reason is None:
            try:
                splits = ds.load(None)
                row.update(kind=splits.kind)
                if splits.kind != "text":
                    row.update(image_shape=list(splits.image_shape))
            except StitchError as exc:
                row["note"] = str(exc)
            else:
                row.update(
                    train=len(splits.train_y),
                    test=len(splits.test_y),
                    classes=splits.num_classes,
                )
        rows.append(row)
    return rows


def _cells(r: dict) -> dict[str, str]:
    """The text of one row's columns (no markup)."""
    if r["train"] is not None:
        sizes = f"{r['train']}/{r['test']}"
        classes = str(r["classes"]) + (
            f" ({len(r['coarse_classes'])})" if r["coarse_classes"] else ""
        )
        if r["kind"] == "text":
            shown = "text"
        else:
            shown = "×".join(map(str, r["image_shape"])) + (" lazy" if r["kind"] == "lazy" else "")
    else:
        sizes, classes, shown = "-", "-", "-"
    here = "no" if not r["available"] else ("with :ARG" if r["note"] else "yes")
    return {
        "name": r["name"],
        "here": here,
        "train/test": sizes,
        "classes": classes,
        "input": shown,
        "variants": ", ".join(r["variants"]) or "-",
    }


def _notes(rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        if not r["available"]:
            notes.append(f"{r['name']} unavailable: {r['reason']}")
        elif r["note"]:
            note = r["note"]
            notes.append(note if note.startswith(r["name"]) else f"{r['name']}: {note}")
    return notes


def plain_lines(rows: list[dict]) -> list[str]:
    """The table as plain text: a header, one padded line per dataset, then the notes."""
    cells = [_cells(r) for r in rows]
    widths = {c: max([len(c), *(len(x[c]) for x in cells)]) for c in COLUMNS}

    def line(values: dict[str, str]) -> str:
        return "  ".join(values[c].ljust(widths[c]) for c in COLUMNS).rstrip()

    out = [line({c: c for c in COLUMNS})]
    out += [line(x) for x in cells]
    out.append("classes (k): k superclasses with --coarse; input: C×H×W, text, or lazy (files)")
    return out + _notes(rows)


@cli.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
def datasets_command(as_json: bool) -> None:
    """List every registered dataset: available here or why not, variants and sizes.

    Use a dataset as --data NAME or --data NAME:VARIANT. Piped, the list is plain text lines
    (full names, no table borders).

    \b
    Examples:
      stitch datasets
      stitch datasets | grep yes
      stitch datasets --json
    """
    rows = dataset_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console = Console()
    if not console.is_terminal:
        for text in plain_lines(rows):
            click.echo(text)
        return
    table = Table(title="stitchcore datasets", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in COLUMNS[:-1]:
        table.add_column(col, no_wrap=True)
    table.add_column("variants", min_width=12, overflow="fold")
    table.caption = "classes (k): k superclasses with --coarse; input: C×H×W, text, or lazy"
    styles = {"yes": "[green]yes[/]", "no": "[red]no[/]"}
    for r in rows:
        cells = {k: escape(v) for k, v in _cells(r).items()}
        cells["here"] = styles.get(cells["here"], cells["here"])
        table.add_row(*(cells[c] for c in COLUMNS))
    console.print(table)
    for note in _notes(rows):
        name, _, rest = note.partition(" ")
        console.print(f"[bold]{escape(name)}[/] {escape(rest)}")
