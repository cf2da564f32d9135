"""``stitch plot DIR``: redraw a matrix directory's heatmap and CSV from its matrix.json.

Useful to look at another metric (the penalty, the accuracy before training), to redraw a
matrix copied from another machine, or one whose run was stopped before it drew its figure.
``--metric`` also draws the per-cell diagnostics newer matrices record (agreement, match R²,
effective ranks, OOD score; docs/report.md); asking an older matrix for one is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import StitchError
from ..plot import IMAGE_FORMATS, METRICS, check_output, plot_matrix, write_csv
from .main import cli

__all__ = ["plot_command", "read_matrix_json"]


def read_matrix_json(target: Path) -> tuple[dict, Path]:
    """Load ``DIR/matrix.json`` (or a JSON file given directly); StitchError when it is missing
    or unreadable. Returns the results and the matrix directory."""
    if target.is_dir():
        directory, file = target, target / "matrix.json"
    elif target.suffix == ".json" and target.is_file():
        directory, file = target.parent, target
    elif not target.exists():
        raise StitchError(f"no such matrix directory: {target}")
    else:
        raise StitchError(f"{target} is not a matrix directory (a directory with matrix.json)")
    if not file.is_file():
        raise StitchError(
            f"{directory} has no matrix.json: is it a directory written by `stitch matrix`?"
        )
    try:
        results = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise StitchError(
            f"{file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StitchError(f"cannot read {file}: {exc}") from exc
    return results, directory


@cli.command("plot")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default=None,
    help="Cell value to draw; penalty = receiver accuracy - stitched accuracy; agreement, "
    "match_r2, rank_stitched, rank_receiver, ood_score: the diagnostics (docs/report.md). "
    "[default: stitched_accuracy; match_r2 in a matrix that records no accuracy]",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Image file to write ({', '.join('.' + f for f in IMAGE_FORMATS)}). "
    "[default: DIR/heatmap.png]",
)
def plot_command(directory: Path, metric: str | None, out: Path | None) -> None:
    """Redraw the heatmap (and matrix.csv) of the stitching matrix in DIR from DIR/matrix.json.

    \b
    Examples:
      stitch plot runs/r18-r34
      stitch plot runs/r18-r34 --metric penalty --out penalty.png
      stitch plot runs/r18-r34 --metric ood_score --out ood.svg
    """
    results, directory = read_matrix_json(directory)
    image = out or directory / "heatmap.png"
    check_output(image)  # before anything is drawn
    check_output(directory / "matrix.csv", ("csv",))
    plot_matrix(results, image, metric=metric)
    rows = write_csv(results, directory / "matrix.csv")
    click.echo(f"wrote {image} and {directory / 'matrix.csv'} ({rows} cells)", err=True)
