"""Tables printed by the CLI: the matrix as a grid of stitched accuracies, and plain layouts.

Why two layouts: on a terminal a rich table is easiest to read, but piped into a file, ``less``
or another program rich falls back to 80 columns and cuts names ("register_datase…"). So when
stdout is not a terminal the same content is printed as plain aligned text: every name in
full, one row per line, no box drawing, no colour. On a terminal the rich table folds a long
name onto more lines instead of cutting it.

Markers in the matrix (both layouts): ``‡`` the cell hit the epoch cap (``converged`` false:
not converged), ``!`` the cell carries a warning; a legend line follows when any is used, and a
note when the run trained a fixed number of epochs (not converged either).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..plot import convergence_label

__all__ = ["is_terminal", "print_matrix", "print_table"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str = "",
    caption: str = "",
    right: Sequence[bool] | None = None,
    file: TextIO | None = None,
) -> None:
    """Print a table: rich (long cells folded, never cut) on a terminal, else plain aligned
    text with a title line, a header line and one line per row (cells never cut)."""
    file = file or sys.stdout
    right = list(right or [False] * len(columns))
    if is_terminal(file):
        console = Console(file=file, highlight=False)
        # Each column as wide as its longest word where all fit the terminal, so words wrap
        # whole; else rich narrows them, folding long words (still never cutting them).
        longest = [
            min(max(len(w) for cell in [name, *(row[k] for row in rows)] for w in cell.split()), 30)
            if any(cell.strip() for cell in [name, *(row[k] for row in rows)])
            else 1
            for k, name in enumerate(columns)
        ]
        fits = sum(longest) + 3 * len(columns) + 1 <= console.width
        table = Table(title=title or None, caption=caption or None, title_justify="left")
        for name, r, w in zip(columns, right, longest):
            justify = "right" if r else "left"
            table.add_column(name, justify=justify, overflow="fold", min_width=w if fits else None)
        for row in rows:
            table.add_row(*(Text(c) for c in row))  # names are not markup
        console.print(table)
        return
    widths = [max([len(c), *(len(row[k]) for row in rows)]) for k, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(columns), *(line(row) for row in rows)]
    if caption:
        out.append(caption)
    file.write("\n".join(out) + "\n")


def print_matrix(results: dict, file: TextIO | None = None) -> None:
    """One table per variant: sender cuts as rows, receiver cuts as columns, each cell the
    stitched accuracy (and the CKA where recorded), "refused"/"failed" for cells that did not
    stitch, empty where not computed; markers as in the module docstring."""
    file = file or sys.stdout
    s_cuts = [c["name"] for c in results["cuts"]["sender"]]
    r_cuts = [c["name"] for c in results["cuts"]["receiver"]]
    config = results.get("config") or {}
    cells = results.get("cells") or []
    variant_list = results.get("variants") or ["main"]
    for n, variant in enumerate(variant_list):
        base = (results.get("baselines") or {}).get(variant) or {}
        grid = {(c["i"], c["j"]): c for c in cells if c.get("variant", "main") == variant}
        rows = [
            [s, *(_cell_text(grid.get((i, j))) for j in range(len(r_cuts)))]
            for i, s in enumerate(s_cuts)
        ]
        mine = list(grid.values())
        caption = [
            f"sender own {_pct(base.get('sender_accuracy'))}, receiver own "
            f"{_pct(base.get('receiver_accuracy'))}"
        ]
        caption += _legend(mine)
        if n:
            file.write("\n")
        print_table(
            ["sender \\ receiver", *r_cuts],
            rows,
            title=f"{variant}: stitched accuracy (rows: sender {config.get('sender')}, "
            f"columns: receiver {config.get('receiver')})",
            caption="\n".join(caption),
            right=[False, *[True] * len(r_cuts)],
            file=file,
        )


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return ""
    if cell.get("status", "ok") != "ok":
        return str(cell.get("status"))
    text = _pct(cell.get("stitched_accuracy"))
    if cell.get("converged") is False or cell.get("stop") == "cap":
        text += "‡"
    if cell.get("warning"):
        text += "!"
    if isinstance(cell.get("cka"), int | float):
        text += f" cka {cell['cka']:.2f}"
    return text


def _legend(cells: list[dict]) -> list[str]:
    labels = [convergence_label(c) for c in cells if c.get("status", "ok") == "ok"]
    lines = []
    if any(label and label.startswith("hit the epoch cap") for label in labels):
        lines.append("‡ hit the epoch cap: not converged")
    if any(c.get("warning") for c in cells):
        lines.append("! warning (see matrix.csv or report.html)")
    if any(label == "not converged (fixed epochs)" for label in labels):
        lines.append("trained a fixed number of epochs: not converged (fixed epochs)")
    return lines


def _pct(v) -> str:
    return "–" if not isinstance(v, int | float) else f"{100 * v:.1f}%"
