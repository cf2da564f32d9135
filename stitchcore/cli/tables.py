"""Tables printed by the CLI (the matrix as a grid of stitched accuracies)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["print_matrix"]


def print_matrix(results: dict) -> None:
    console = Console()
    s_cuts = [c["name"] for c in results["cuts"]["sender"]]
    r_cuts = [c["name"] for c in results["cuts"]["receiver"]]
    for variant in results["variants"]:
        base = results["baselines"].get(variant, {})
        grid = {(c["i"], c["j"]): c for c in results["cells"] if c["variant"] == variant}
        table = Table(
            title=f"{variant}: stitched accuracy (rows: sender {results['config']['sender']}, "
            f"columns: receiver {results['config']['receiver']})",
            caption=f"sender own {_pct(base.get('sender_accuracy'))}, receiver own "
            f"{_pct(base.get('receiver_accuracy'))}",
        )
        table.add_column("sender \\ receiver")
        for name in r_cuts:
            table.add_column(name, justify="right")
        for i, s in enumerate(s_cuts):
            row = []
            for j in range(len(r_cuts)):
                c = grid.get((i, j))
                if c is None:
                    row.append("")
                elif c["status"] != "ok":
                    row.append(f"[dim]{c['status']}[/]")
                else:
                    cka = f" [dim]cka {c['cka']:.2f}[/]" if c.get("cka") is not None else ""
                    row.append(_pct(c.get("stitched_accuracy")) + cka)
            table.add_row(s, *row)
        console.print(table)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"
