"""Draw a stitching matrix (``matrix.json`` results) as heatmaps, and flatten it to CSV.

One panel per variant (the main matrix first, then the random-model controls), plus the CKA
matrix of the main models when it was computed, so "does stitching work here?" and "are the
representations alike?" can be read side by side (Bansal et al. 2021 show they can disagree).
Sender cuts are rows, top = first cut, receiver cuts are columns, as in the papers' figures.
Cells that were refused (no stitch family fits the pair) or failed (error, divergence) are
drawn grey with an "×" so they are never mistaken for a low score; cells not computed yet stay
blank, so the same function draws a matrix that is still running.

Each cell also shows a short tag of its stitch family (legend under the figure), and a cell
whose training hit the epoch cap (``converged`` false) is hatched and tagged "cap": its number
may still be rising. A fixed-epoch run (``stop`` "fixed") is noted as not converged.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot): no
global state, no display needed, nothing to close, safe to call after every finished cell.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import StitchError
from .fileio import atomic_write

__all__ = [
    "CSV_COLUMNS",
    "DIAGNOSTICS",
    "FAMILY_TAGS",
    "IMAGE_FORMATS",
    "METRICS",
    "METRIC_LABELS",
    "SCHEMA",
    "VARIANT_TITLES",
    "check_output",
    "check_results",
    "cell_grid",
    "cka_grid",
    "convergence_label",
    "family_tags",
    "headline_metric",
    "metric_grid",
    "metric_scale",
    "plot_matrix",
    "variants",
    "write_csv",
]

SCHEMA = "stitchcore.matrix/1"

#: Per-cell diagnostics newer matrices record (absent from older ones; docs/report.md).
DIAGNOSTICS = ("agreement", "match_r2", "rank_stitched", "rank_receiver", "ood_score")

#: Metrics the CLI offers; any numeric cell field can be drawn from Python.
METRICS = ("stitched_accuracy", "penalty", "init_accuracy", *DIAGNOSTICS)

METRIC_LABELS = {
    "stitched_accuracy": "stitched accuracy",
    "init_accuracy": "accuracy at init (before training)",
    "penalty": "stitching penalty (receiver − stitched)",
    "cka": "linear CKA",
    "agreement": "agreement (stitched and receiver predict the same class)",
    "match_r2": "match R² (stitch output vs the receiver's own activation)",
    "rank_stitched": "effective rank of the stitched activation",
    "rank_receiver": "effective rank of the receiver's own activation",
    "ood_score": "OOD score (1 ≈ the receiver's own test activations)",
    "stitched_loss": "stitched loss",
    "train_loss": "train loss",
    "epochs": "epochs trained",
    "time_s": "time (s)",
}

#: Image formats matplotlib's Agg canvas writes, by file suffix.
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp", "tif", "tiff", "eps", "ps")

#: Short tags of the first-party families; :func:`family_tags` derives others.
FAMILY_TAGS = {
    "conv1x1": "1×1",
    "strided_conv": "str",
    "upsample_conv": "up",
    "subpixel_conv": "sub",
    "token_linear": "tok",
    "linear": "lin",
    "permutation": "perm",
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


def check_output(path: str | os.PathLike, formats: Iterable[str] = IMAGE_FORMATS) -> str:
    """Raise StitchError, before anything is drawn, when ``path`` cannot be written: a suffix
    not in ``formats``, a directory, a parent that is a file or not writable (missing parents
    are fine: they are created). Returns the format, the lower-case suffix without its dot."""
    path = Path(path)
    formats = tuple(formats)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in formats:
        raise StitchError(
            f"cannot write {path}: unknown file type {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join('.' + f for f in formats)}"
        )
    if path.is_dir():
        raise StitchError(f"cannot write {path}: it is a directory")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StitchError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StitchError(f"cannot write {path}: {parent} is not writable")
    return fmt


def family_tags(families: Iterable[str]) -> dict[str, str]:
    """A short tag per family name, unique among ``families`` (the legend spells each out):
    the first-party families' fixed tags, else the initials of a multi-part name
    ("low_rank" → "lr") or its first four letters, with a digit added on a collision."""
    tags: dict[str, str] = {}
    names = sorted({f for f in families if f}, key=lambda f: (f not in FAMILY_TAGS, f))
    for name in names:
        base = FAMILY_TAGS.get(name)
        if base is None:
            parts = [p for p in re.split(r"[_\-.\s]+", name) if p]
            base = "".join(p[0] for p in parts) if len(parts) > 1 else name[:4]
        tag, k = base, 2
        while tag in tags.values():
            tag, k = f"{base}{k}", k + 1
        tags[name] = tag
    return tags


def convergence_label(cell: dict) -> str | None:
    """How a cell's training ended, in words, or None where the matrix did not record it (older
    matrices). ``converged`` false (or ``stop`` "cap") means the epoch cap ended it; null, or
    ``stop`` "fixed", is a fixed-epoch run: not converged either, only not checked."""
    stop = cell.get("stop")
    if "converged" not in cell and stop is None:
        return None
    converged = cell.get("converged")
    if converged is False or stop == "cap":
        return "hit the epoch cap (not converged)"
    if converged is True:
        return f"converged ({stop})" if stop else "converged"
    return "not converged (fixed epochs)"


def _capped(cell: dict | None) -> bool:
    return bool(cell) and (cell.get("converged") is False or cell.get("stop") == "cap")


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


def cell_grid(results: dict, variant: str) -> np.ndarray:
    """The cell records of one variant as an object grid [n_sender_cuts, n_receiver_cuts]
    (None where no cell was recorded; a later cell for a position overrides an earlier one)."""
    n_a, n_b = len(results["cuts"]["sender"]), len(results["cuts"]["receiver"])
    grid = np.full((n_a, n_b), None, dtype=object)
    for cell in results["cells"]:
        if cell.get("variant", "main") == variant:
            grid[cell["i"], cell["j"]] = cell
    return grid


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
    """Wrap at spaces only, never inside a word, so a model name or cut stays whole; a single
    word longer than 1.5 × ``width`` (at least 40) characters is shortened in its middle
    ("abc…xyz") rather than run far past its panel."""
    width = max(width, 24)
    longest = max(int(width * 1.5), 40)
    words = [
        w if len(w) <= longest else w[: longest // 2 - 1] + "…" + w[-(longest - longest // 2) :]
        for w in text.split(" ")
    ]
    return "\n".join(
        textwrap.wrap(" ".join(words), width=width, break_long_words=False, break_on_hyphens=False)
    )


def _chars(width_in: float, fontsize: float) -> int:
    """About how many characters of ``fontsize`` points fit in ``width_in`` inches."""
    return max(int(width_in * 72 / (fontsize * 0.6)), 24)


def _fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "n/a"


def _suptitle(results: dict, metric: str, chars: int) -> str:
    """The models on one line and the data on the next, each wrapped at spaces to the figure's
    width (a long line would be clipped at both edges of the figure)."""
    data = results.get("data") or {}
    name = data.get("name") or (results.get("config") or {}).get("data") or "?"
    sizes = ""
    if data.get("train_size") is not None and data.get("test_size") is not None:
        sizes = f" (train {data['train_size']}, test {data['test_size']})"
    base = (results.get("baselines") or {}).get("main") or {}
    lines = [
        f"{_model_label(results, 'sender')}  →  {_model_label(results, 'receiver')}",
        f"data: {name}{sizes}   ·   own test accuracy: sender "
        f"{_fmt(base.get('sender_accuracy'))}, receiver {_fmt(base.get('receiver_accuracy'))}"
        f"   ·   cells: {METRIC_LABELS.get(metric, metric)}",
    ]
    return "\n".join(_wrap(line, chars) for line in lines)


def metric_scale(metric: str, values: np.ndarray):
    """``(Normalize, colormap)`` of a metric over ``values`` (NaN ignored); bright is good.

    Accuracies and the agreement share a fixed 0–1 scale, CKA too (magma). The penalty is
    diverging around 0 (red = worse than the receiver alone), scaled to the largest |penalty|
    (rounded up to 0.05, at least 0.1) so small penalties stay visible while near-zero ones
    are not blown up to full colour. Match R² ends at 1 and starts at min(0, lowest), not below
    −1 (lower values saturate). The OOD score is reversed (1 = in distribution is bright).
    Anything else spans its own range."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if metric.endswith("accuracy") or metric == "agreement":
        return Normalize(0.0, 1.0), colormaps["viridis"]
    if metric == "cka":
        return Normalize(0.0, 1.0), colormaps["magma"]
    if metric == "penalty":
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        lim = max(math.ceil(largest / 0.05 - 1e-9) * 0.05, 0.1)
        return Normalize(-lim, lim), colormaps["RdBu_r"]
    if metric == "match_r2":
        return Normalize(max(min(0.0, lo), -1.0), 1.0), colormaps["viridis"]
    if metric == "ood_score":
        lo = min(1.0, lo)
        return Normalize(lo, max(hi, lo + 1.0)), colormaps["viridis_r"]
    return Normalize(lo, hi if hi > lo else lo + 1.0), colormaps["viridis"]


def _cell_text(v: float, compact: bool) -> str:
    """Two decimals (one from 10, none from 100); in small cells without the leading zero
    (".95"), as in the papers."""
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return text.replace("0.", ".", 1) if compact and abs(v) < 1 else text


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _draw_cell(ax, i: int, j: int, v: float, cell: dict | None, style: dict) -> None:
    """The value, and under it the family tag ("cap" added, the cell hatched, when training hit
    the epoch cap). Texts carry labels ("value", "family") so tests can tell them apart."""
    font, colour = style["font"], _text_colour(style["cmap"](style["norm"](v)))
    tag = style["tags"].get((cell or {}).get("family"), "")
    capped = _capped(cell)
    if capped:
        tag = f"{tag} cap".strip()
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor=colour,
                alpha=0.45, linewidth=0, label="cap",
            )
        )  # fmt: skip
    y = i - 0.12 if tag else i
    text = _cell_text(v, compact=font < 5)
    ax.text(j, y, text, ha="center", va="center", fontsize=font, color=colour, label="value")
    if tag:
        ax.text(
            j, i + 0.26, tag, ha="center", va="center", fontsize=font * 0.8, color=colour,
            label="family", fontweight="bold" if capped else "normal",
        )  # fmt: skip


def _draw_panel(
    fig: Figure,
    ax,
    values: np.ndarray,
    cells: np.ndarray | None,
    scale: tuple,
    titles: tuple[str, str],
    labels: tuple[list[str], list[str]],
    axis_names: tuple[str, str],
    style: dict,
) -> None:
    n_a, n_b = values.shape
    norm, cmap = scale
    cmap = cmap.with_extremes(bad="0.96")  # not computed: a faint empty box
    style = {**style, "norm": norm, "cmap": cmap}
    font = style["font"]
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, norm=norm, interpolation="nearest", aspect="equal"
    )
    for i in range(n_a):
        for j in range(n_b):
            cell = None if cells is None else cells[i, j]
            state = cell.get("status", "ok") if cell else ""
            mark = {"ha": "center", "va": "center", "fontsize": font * 1.4, "label": "mark"}
            if state in _BAD_STATUSES:
                failed = state == "failed"
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.82", linewidth=0,
                              edgecolor="0.45" if failed else "none",
                              hatch="////" if failed else None)
                )  # fmt: skip
                ax.text(j, i, "×", color="0.2", **mark)
            elif state == "ok" and not np.isfinite(values[i, j]):
                # Computed, but this metric was not recorded (e.g. no accuracy for a model
                # whose head does not fit the data): not the same as "not computed yet".
                ax.text(j, i, "–", color="0.45", **mark)
            elif np.isfinite(values[i, j]):
                _draw_cell(ax, i, j, values[i, j], cell, style)
    tick = max(font * 1.3, 5.0)
    ax.set_title(titles[0], fontsize=9)
    ax.set_yticks(range(n_a), labels[0], fontsize=tick)
    ax.set_xticks(range(n_b), labels[1], fontsize=tick, rotation=90)
    ax.set_ylabel(axis_names[0], fontsize=9)
    ax.set_xlabel(axis_names[1], fontsize=9)
    ax.set_xticks(np.arange(-0.5, n_b, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_a, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02)
    bar.set_label(titles[1], fontsize=8)
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


def _check_metric(results: dict, metric: str) -> None:
    """A metric no computed cell records (a diagnostic asked of an older matrix) is an error,
    not a figure of dashes; a matrix with no computed cell yet still draws."""
    ok = [c for c in results["cells"] if c.get("status", "ok") == "ok"]
    if not ok or any(isinstance(c.get(metric), int | float) for c in ok):
        return
    recorded = [m for m in METRICS if any(isinstance(c.get(m), int | float) for c in ok)]
    raise StitchError(
        f"no cell of this matrix records {metric!r} (matrices from older versions have no "
        f"diagnostics); recorded: {', '.join(recorded) or 'none'}"
    )


def _footnote(tags: dict[str, str], cells: list[dict], chars: int) -> str:
    """The legend: markers, the family tags used, the epoch-cap mark and the fixed-epoch note."""
    parts = [
        "× on grey: refused (no stitch family fits the pair)",
        "× hatched: failed (reason in matrix.csv)",
        "–: no value for this metric",
        "blank: not computed",
    ]
    if tags:
        parts.append("family: " + ", ".join(f"{t} = {f}" for f, t in tags.items()))
    if any(_capped(c) for c in cells):
        parts.append("hatched, “cap”: hit the epoch cap (not converged)")
    if any(convergence_label(c) == "not converged (fixed epochs)" for c in cells):
        parts.append("not converged (fixed epochs): trained a fixed number of epochs")
    return _wrap("   ·   ".join(parts), chars)


def headline_metric(results: dict) -> str:
    """What a matrix is drawn as by default: stitched accuracy, or the matching R² where no
    cell records an accuracy (a ``match`` objective into a receiver without a classifier)."""
    ok = [c for c in results["cells"] if c.get("status", "ok") == "ok"]

    def recorded(metric: str) -> bool:
        return any(isinstance(c.get(metric), int | float) for c in ok)

    if ok and not recorded("stitched_accuracy") and recorded("match_r2"):
        return "match_r2"
    return "stitched_accuracy"


def plot_matrix(results: dict, path: str | os.PathLike | None, metric: str | None = None) -> Figure:
    """Draw the stitching matrix heatmaps to ``path`` (its suffix picks the format: .png, .svg,
    .pdf, …) and return the figure. ``path=None`` only builds the figure. Cells show ``metric``:
    any numeric cell field (``stitched_accuracy``, ``penalty``, a diagnostic, ...; None: the
    :func:`headline_metric`). Bad results, a metric no cell records and an unwritable ``path``
    raise StitchError before drawing."""
    check_results(results)
    fmt = None if path is None else check_output(path)
    metric = metric or headline_metric(results)
    _check_metric(results, metric)
    sender_cuts, receiver_cuts = results["cuts"]["sender"], results["cuts"]["receiver"]
    n_a, n_b = len(sender_cuts), len(receiver_cuts)
    labels = (_cut_labels(sender_cuts), _cut_labels(receiver_cuts))

    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for variant in variants(results):
        values, _ = metric_grid(results, variant, metric)
        panels.append((variant, values, cell_grid(results, variant)))
    cka = cka_grid(results, "main")
    if cka is not None:
        panels.append(("cka", cka, None))
    if not panels:  # no variants, no cells yet: an empty main panel says "nothing computed"
        panels.append(("main", np.full((n_a, n_b), np.nan), np.full((n_a, n_b), None, object)))

    # Cells shrink as the matrix grows (down to a size still legible when zoomed); panels
    # wrap onto rows so the figure stays at most about 20 inches wide.
    n = len(panels)
    cell = min(0.6, max(0.22, 5.0 / max(n_a, n_b)))
    font = 7.0 if cell >= 0.45 else 5.0 if cell >= 0.3 else 3.5
    label_room = 0.07 * max(len(s) for s in labels[0] + labels[1]) * max(font * 1.3, 5.0) / 9.1
    panel_w, panel_h = n_b * cell + label_room + 1.6, n_a * cell + label_room + 1.6
    axis_names = (  # wrapped to the panel's height / width (cells only), at spaces
        _wrap(f"sender cut ({_model_spec(results, 'sender')})", _chars(n_a * cell + 0.6, 9)),
        _wrap(f"receiver cut ({_model_spec(results, 'receiver')})", _chars(n_b * cell + 0.6, 9)),
    )
    ncols = max(1, min(2 if n == 4 else min(n, 3), int(20 // panel_w)))
    nrows = math.ceil(n / ncols)
    width, height = ncols * panel_w, nrows * panel_h + 1.3
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[n:]:
        ax.remove()

    ok = [c for c in results["cells"] if c.get("status", "ok") == "ok"]
    tags = family_tags(c.get("family") for c in ok)
    style = {"font": font, "tags": tags}
    for ax, (variant, values, cells) in zip(axes, panels):
        if variant == "cka":
            titles = ("linear CKA (main models)\nminibatch estimate, debiased HSIC", "linear CKA")
            _draw_panel(
                fig, ax, values, None, metric_scale("cka", values), titles, labels,
                axis_names, style,
            )  # fmt: skip
            ax.set_label("panel:cka")
            continue
        status = np.vectorize(lambda c: c.get("status", "ok") if c else "", otypes=[object])(cells)
        titles = (_panel_title(results, variant, status), METRIC_LABELS.get(metric, metric))
        scale = metric_scale(metric, values)
        _draw_panel(fig, ax, values, cells, scale, titles, labels, axis_names, style)
        ax.set_label(f"panel:{variant}")

    fig.suptitle(_suptitle(results, metric, _chars(width, 9)), fontsize=9)
    fig.supxlabel(_footnote(tags, results["cells"], _chars(width, 7)), fontsize=7, color="0.3")
    if path is not None:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))
    return fig


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

    atomic_write(path, write)
    return len(rows)
