"""``stitch report DIR``: write DIR/report.html, the interactive page of a matrix directory.

The page (see :mod:`stitchcore.report`) is one self-contained file: it opens offline, from a
copied results directory, or attached to a message. The command prints the file's path to
stdout (so ``xdg-open "$(stitch report DIR)"`` works) and can open it in the browser itself.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from ..plot import check_output
from ..report import write_report
from .main import cli
from .plot_cmd import read_matrix_json

__all__ = ["report_command"]


@cli.command("report")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML file to write. [default: DIR/report.html]",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a web browser.")
def report_command(directory: Path, out: Path | None, open_browser: bool) -> None:
    """Write an interactive HTML report of the stitching matrix in DIR (from DIR/matrix.json):
    heatmaps of every recorded metric with the controls beside the main matrix, each cell's
    details (family, training curves, diagnostics, timings), the configuration and versions.
    One self-contained file; no network needed to view it.

    \b
    Examples:
      stitch report results/matrix-timm-resnet18-timm-resnet34-digits
      stitch report runs/r18-r34 --out r18-r34.html --open
    """
    results, directory = read_matrix_json(directory)
    path = out or directory / "report.html"
    check_output(path, ("html", "htm"))
    write_report(results, path)
    click.echo(str(path))
    if open_browser and not webbrowser.open(path.resolve().as_uri()):
        click.echo(f"no web browser found; open {path} yourself", err=True)
