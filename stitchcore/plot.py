"""Draw a stitching matrix (``matrix.json`` results) as heatmaps, and flatten it to CSV.

One panel per variant (the main matrix first, then the random-model controls), plus the CKA
matrix of the main models when it was computed, so "does stitching work here?" and "are the
representations alike?" can be read side by side (Bansal et al. 2021 show they can disagree).
Sender cuts are rows, top = first cut, receiver cuts are columns, as in the papers' figures.
Cells that were refused (no stitch family fits the pair) or failed (error, divergence) are
drawn grey with an "×" so they are never mistaken for a low score; cells not computed yet stay
blank, so the same function draws a matrix that is still running.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot): no
global state, no display needed, nothing to close, safe to call after every finished cell.
"""

from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import StitchError

SCHEMA = "stitchcore.matrix/1"

#: Metrics the CLI offers; any numeric cell field can be drawn from Python.
METRICS = ("stitched_accuracy", "penalty", "init_accuracy")

METRIC_LABELS = {
    "stitched_accuracy": "stitched accuracy",
    "init_accuracy": "accuracy at init (before training)",
    "penalty": "stitching penalty (receiver − stitched)",
    "stitched_loss": "stitched loss",
    "train_loss": "train loss",
    "time_s": "time (s)",
}

VARIANT_TITLES = {
    "main": "main",
    "random-sender": "control: random sender",
    "random-receiver": "control: random receiver",
    "random-both": "control: random sender and receiver",
}

#: CSV columns in this order first; any other cell field follows, then the cell's CKA.
CSV_COLUMNS = (
    "variant",
    "i",
    "j",
    "sender_cut",
    "receiver_cut",
    "status",
    "reason",
    "family",
    "family_reason",
    "stitched_accuracy",
    "stitched_loss",
    "init_accuracy",
    "receiver_accuracy",
    "penalty",
    "train_loss",
    "epochs",
    "time_s",
)

_BAD_STATUSES = ("refused", "failed")


def check_results(results: object) -> None:
    """Raise StitchError naming what is wrong when ``results`` cannot be drawn or flattened."""
    if not isinstance(results, dict):
        raise StitchError(f"matrix results must be a JSON object, got {type(results).__name__}")
    schema = results.get("schema")
    if schema is not None and schema != SCHEMA:
        raise StitchError(f"matrix results have schema {schema!r}; this version reads {SCHEMA!r}")
    cuts = results.get("cuts")
    if not isinstance(cuts, dict) or not all(
        isinstance(cuts.get(side), list) and cuts[side] for side in ("sender", "receiver")
    ):
        raise StitchError("matrix results lack cuts.sender / cuts.receiver (non-empty lists)")
    n_a, n_b = len(cuts["sender"]), len(cuts["receiver"])
    cells = results.get("cells", [])
    if not isinstance(cells, list):
        raise StitchError("matrix results: 'cells' must be a list")
    for k, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise StitchError(f"matrix results: cell #{k} is not an object")
        i, j = cell.get("i"), cell.get("j")
        if not (isinstance(i, int) and isinstance(j, int) and 0 <= i < n_a and 0 <= j < n_b):
            raise StitchError(
                f"matrix results: cell #{k} has i={i!r}, j={j!r}, outside the {n_a}×{n_b} cut grid"
            )
    cka = (results.get("cka") or {}).get("main")
    if cka is not None and np.shape(np.array(cka, dtype=object)) != (n_a, n_b):
        raise StitchError(f"matrix results: cka.main is not a {n_a}×{n_b} list of lists")


def variants(results: dict) -> list[str]:
    """Variants to draw: ``main`` first, then the others in listed order, then any that only
    appear in cells (a matrix being merged from several runs)."""
    seen: list[str] = []
    for v in [*results.get("variants", []), *(c.get("variant", "main") for c in results["cells"])]:
        if v not in seen:
            seen.append(v)
    return sorted(seen, key=lambda v: v != "main")


def metric_grid(results: dict, variant: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, status)`` grids [n_sender_cuts, n_receiver_cuts] for one variant.

    values is NaN where a cell is missing, not ok or has no such metric; status holds the
    cell's status string, or "" where no cell was recorded. A later cell for the same
    position overrides an earlier one (a retried cell).
    """
    n_a, n_b = len(results["cuts"]["sender"]), len(results["cuts"]["receiver"])
    values = np.full((n_a, n_b), np.nan)
    status = np.full((n_a, n_b), "", dtype=object)
    for cell in results["cells"]:
        if cell.get("variant", "main") != variant:
            continue
        i, j = cell["i"], cell["j"]
        status[i, j] = cell.get("status", "ok")
        value = cell.get(metric)
        values[i, j] = np.nan
        if status[i, j] == "ok" and isinstance(value, int | float):
            values[i, j] = float(value)
    return values, status


def cka_grid(results: dict, variant: str = "main") -> np.ndarray | None:
    """The CKA matrix of one variant as floats (NaN where not computed), or None if absent."""
    cka = (results.get("cka") or {}).get(variant)
    if cka is None:
        return None
    return np.array([[np.nan if v is None else float(v) for v in row] for row in cka])


def _cut_labels(cuts: list[dict]) -> list[str]:
    labels = []
    for c in cuts:
        label = str(c.get("name", "?"))
        shape = c.get("shape")
        if shape:
            label += "  " + "×".join(str(s) for s in shape)
        labels.append(label)
    return labels


def _model_spec(results: dict, side: str) -> str:
    model = (results.get("models") or {}).get(side) or {}
    return str(model.get("spec") or (results.get("config") or {}).get(side) or side)


def _model_label(results: dict, side: str) -> str:
    """The spec as asked for, and what it resolved to when that differs (a zoo checkpoint)."""
    spec = _model_spec(results, side)
    loaded = ((results.get("models") or {}).get(side) or {}).get("loaded_as")
    return f"{spec} (= {loaded})" if loaded and loaded != spec else spec


def _wrap(text: str, width: int) -> str:
    """Axis labels longer than their panel wrap instead of running into the next panel."""
    return "\n".join(textwrap.wrap(text, width=max(width, 24), break_long_words=True))


def _fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "n/a"


def _suptitle(results: dict, metric: str) -> str:
    data = results.get("data") or {}
    name = data.get("name") or (results.get("config") or {}).get("data") or "?"
    sizes = ""
    if data.get("train_size") is not None and data.get("test_size") is not None:
        sizes = f" (train {data['train_size']}, test {data['test_size']})"
    base = (results.get("baselines") or {}).get("main") or {}
    return (
        f"{_model_label(results, 'sender')}  →  {_model_label(results, 'receiver')}"
        f"   ·   data: {name}{sizes}\n"
        f"own test accuracy: sender {_fmt(base.get('sender_accuracy'))}, "
        f"receiver {_fmt(base.get('receiver_accuracy'))}   ·   "
        f"cells: {METRIC_LABELS.get(metric, metric)}"
    )


def _norm_and_cmap(metric: str, values: np.ndarray):
    """Accuracies share a fixed 0–1 scale; the penalty is diverging around 0 (red = worse than
    the receiver alone), scaled to this panel's largest |penalty| (rounded up to 0.05, at
    least 0.1) so the main matrix's small penalties stay visible next to the large ones of the
    controls, while a panel of near-zero penalties is not blown up to full colour."""
    finite = values[np.isfinite(values)]
    if metric.endswith("accuracy"):
        return Normalize(0.0, 1.0), colormaps["viridis"]
    if metric == "penalty":
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        lim = max(math.ceil(largest / 0.05 - 1e-9) * 0.05, 0.1)
        return Normalize(-lim, lim), colormaps["RdBu_r"]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(lo, hi if hi > lo else lo + 1.0), colormaps["viridis"]


def _cell_text(v: float, compact: bool) -> str:
    """Two decimals; in small cells without the leading zero (".95"), as in the papers."""
    text = f"{v:.2f}"
    return text.replace("0.", ".", 1) if compact and abs(v) < 1 else text


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _draw_panel(
    fig: Figure,
    ax,
    values: np.ndarray,
    status: np.ndarray | None,
    norm: Normalize,
    cmap,
    title: str,
    cbar_label: str,
    labels: tuple[list[str], list[str]],
    axis_names: tuple[str, str],
    font: float,
) -> None:
    n_a, n_b = values.shape
    cmap = cmap.with_extremes(bad="0.96")  # not computed: a faint empty box
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, norm=norm, interpolation="nearest", aspect="equal"
    )
    for i in range(n_a):
        for j in range(n_b):
            state = "" if status is None else status[i, j]
            if state in _BAD_STATUSES:
                failed = state == "failed"
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        facecolor="0.82",
                        edgecolor="0.45" if failed else "none",
                        hatch="////" if failed else None,
                        linewidth=0,
                    )
                )
                ax.text(j, i, "×", ha="center", va="center", fontsize=font * 1.4, color="0.2")
            elif state == "ok" and not np.isfinite(values[i, j]):
                # Computed, but this metric was not recorded (e.g. no accuracy for a model
                # whose head does not fit the data): not the same as "not computed yet".
                ax.text(j, i, "–", ha="center", va="center", fontsize=font * 1.4, color="0.45")
            elif np.isfinite(values[i, j]):
                v = values[i, j]
                ax.text(
                    j,
                    i,
                    _cell_text(v, compact=font < 5),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color=_text_colour(cmap(norm(v))),
                )
    tick = max(font * 1.3, 5.0)
    ax.set_title(title, fontsize=9)
    ax.set_yticks(range(n_a), labels[0], fontsize=tick)
    ax.set_xticks(range(n_b), labels[1], fontsize=tick, rotation=90)
    ax.set_ylabel(axis_names[0], fontsize=9)
    ax.set_xlabel(axis_names[1], fontsize=9)
    ax.set_xticks(np.arange(-0.5, n_b, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_a, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02)
    bar.set_label(cbar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _panel_title(results: dict, variant: str, status: np.ndarray) -> str:
    title = VARIANT_TITLES.get(variant, variant)
    base = (results.get("baselines") or {}).get(variant) or {}
    counts = {s: int((status == s).sum()) for s in ("ok", *_BAD_STATUSES)}
    total = status.size
    done = f"{counts['ok']}/{total} ok"
    done += "".join(f", {counts[s]} {s}" for s in _BAD_STATUSES if counts[s])
    accs = (
        f"own acc.: sender {_fmt(base.get('sender_accuracy'))}, "
        f"receiver {_fmt(base.get('receiver_accuracy'))}"
        if base
        else "no baselines"
    )
    return f"{title}\n{done}\n{accs}"


def plot_matrix(
    results: dict, path: str | os.PathLike | None, metric: str = "stitched_accuracy"
) -> Figure:
    """Draw the stitching matrix heatmaps to ``path`` (PNG, or SVG/PDF by suffix) and return
    the figure. ``path=None`` only builds the figure. Cells show ``metric``: any numeric cell
    field (``stitched_accuracy``, ``penalty``, ``init_accuracy``, ...)."""
    check_results(results)
    sender_cuts, receiver_cuts = results["cuts"]["sender"], results["cuts"]["receiver"]
    n_a, n_b = len(sender_cuts), len(receiver_cuts)
    labels = (_cut_labels(sender_cuts), _cut_labels(receiver_cuts))
    axis_names = (
        _wrap(f"sender cut ({_model_spec(results, 'sender')})", 6 + n_a * 5),
        _wrap(f"receiver cut ({_model_spec(results, 'receiver')})", 6 + n_b * 5),
    )

    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for variant in variants(results):
        values, status = metric_grid(results, variant, metric)
        panels.append((variant, values, status))
    cka = cka_grid(results, "main")
    if cka is not None:
        panels.append(("cka", cka, None))
    if not panels:  # no variants, no cells yet: an empty main panel says "nothing computed"
        panels.append(("main", np.full((n_a, n_b), np.nan), np.full((n_a, n_b), "", object)))

    # Cells shrink as the matrix grows (down to a size still legible when zoomed); panels
    # wrap onto rows so the figure stays at most about 20 inches wide.
    n = len(panels)
    cell = min(0.6, max(0.22, 5.0 / max(n_a, n_b)))
    font = 7.0 if cell >= 0.45 else 5.0 if cell >= 0.3 else 3.5
    label_room = 0.07 * max(len(s) for s in labels[0] + labels[1]) * max(font * 1.3, 5.0) / 9.1
    panel_w, panel_h = n_b * cell + label_room + 1.6, n_a * cell + label_room + 1.6
    ncols = max(1, min(2 if n == 4 else min(n, 3), int(20 // panel_w)))
    nrows = math.ceil(n / ncols)
    width, height = ncols * panel_w, nrows * panel_h + 1.0
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[n:]:
        ax.remove()

    for ax, (variant, values, status) in zip(axes, panels):
        if variant == "cka":
            _draw_panel(
                fig,
                ax,
                values,
                None,
                Normalize(0.0, 1.0),
                colormaps["magma"],
                "linear CKA (main models)\nminibatch estimate, debiased HSIC",
                "linear CKA",
                labels,
                axis_names,
                font,
            )
            ax.set_label("panel:cka")
            continue
        norm, cmap = _norm_and_cmap(metric, values)
        _draw_panel(
            fig,
            ax,
            values,
            status,
            norm,
            cmap,
            _panel_title(results, variant, status),
            METRIC_LABELS.get(metric, metric),
            labels,
            axis_names,
            font,
        )
        ax.set_label(f"panel:{variant}")

    fig.suptitle(_suptitle(results, metric), fontsize=9)
    fig.supxlabel(
        "× on grey: refused (no stitch family fits the pair)   ·   × hatched: failed "
        "(reason in matrix.csv)   ·   –: no value for this metric   ·   blank: not computed",
        fontsize=7,
        color="0.3",
    )
    if path is not None:
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or "png"
        _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))
    return fig


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _csv_value(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, dict | list | tuple):
        return json.dumps(v)
    return v


def _columns(cells: Iterable[dict]) -> list[str]:
    extra: list[str] = []
    for cell in cells:
        for key in cell:
            if key not in CSV_COLUMNS and key not in extra and key != "cka":
                extra.append(key)
    return [*CSV_COLUMNS, *extra, "cka"]


def write_csv(results: dict, path: str | os.PathLike) -> int:
    """One row per recorded cell with every cell field, plus the CKA of its cut pair (from
    ``results["cka"][variant]``, else the cell's own ``cka`` field; empty where not computed). Rows are ordered by variant (main first), then
    sender cut, then receiver cut. Returns the number of rows."""
    check_results(results)
    order = {v: k for k, v in enumerate(variants(results))}
    latest: dict[tuple[str, int, int], dict] = {}
    for cell in results["cells"]:
        latest[(cell.get("variant", "main"), cell["i"], cell["j"])] = cell
    keys = sorted(latest, key=lambda k: (order[k[0]], k[1], k[2]))
    rows = [latest[k] for k in keys]
    ckas = {v: cka_grid(results, v) for v in order}
    columns = _columns(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for (variant, i, j), cell in zip(keys, rows):
                grid = ckas[variant]
                cka = cell.get("cka")  # the engine may also record it on the cell itself
                if grid is not None and np.isfinite(grid[i, j]):
                    cka = float(grid[i, j])
                row = {**cell, "variant": variant, "cka": cka}
                writer.writerow([_csv_value(row.get(c)) for c in columns])

    _atomic(Path(path), write)
    return len(rows)
