"""``report.html``: one self-contained HTML page to explore a stitching matrix in a browser.

Why a page next to ``heatmap.png``: a matrix has more per cell than a figure can show (family,
init, epochs and how training stopped, the training and validation curves, diagnostics, timings,
the reason a cell was refused), and a reader wants to switch between metrics and sort cuts.

Contract:

- :func:`write_report` is the single entry point (``stitch report``, ``stitch matrix --report``).
  It writes ONE file that needs no network: inline CSS and plain JavaScript, curves as inline
  SVG, no CDN, no web fonts. The results are embedded verbatim as JSON in a
  ``<script type="application/json">`` (every ``<``, ``>`` and ``&`` escaped as ``\\u003c`` …, so
  no string in the results can close the script), next to a small "view" the Python side derives
  (metric values per cell, colour scales sampled from the same matplotlib colormaps and norms
  as the PNG, family tags, convergence labels): one source of truth for both pictures.
- The page renders every cell of every variant as ``td.cell`` with ``data-variant``, ``data-i``,
  ``data-j``, ``data-metric``, ``data-value`` (the number, full precision; empty when the cell
  has none), ``data-status`` and ``data-family``; cells that hit the epoch cap get the class
  ``capped`` (striped, tagged "cap"). Controls are drawn beside the main matrix on one shared
  colour scale, plus one small heatmap per recorded metric.
- The URL hash selects the view at load, through the same code path as the controls:
  ``#metric=penalty&sort=desc&cell=main/1/2`` (sort: ``cuts``, ``desc`` or ``asc`` by the
  row/column mean of the main matrix). The controls write it back, so a view can be shared.
- A JavaScript error is shown on the page (``#errors``, ``body[data-errors]``);
  ``body[data-rendered]`` is set once the page is drawn. Old matrices without the newer fields
  (diagnostics, convergence, provenance) render with those parts left out.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.colors import to_hex

from .fileio import atomic_write
from .plot import (
    DIAGNOSTICS,
    METRIC_LABELS,
    VARIANT_TITLES,
    check_output,
    check_results,
    cka_grid,
    convergence_label,
    family_tags,
    metric_scale,
    variants,
)

__all__ = ["REPORT_METRICS", "render_report", "write_report"]

#: Metrics the page offers, in this order, where at least one cell records them, with the
#: short names the small heatmaps and the details use.
REPORT_METRICS = {
    "stitched_accuracy": "stitched accuracy",
    "penalty": "penalty",
    "cka": "CKA",
    "init_accuracy": "accuracy at init",
    "agreement": "agreement",
    "match_r2": "match R²",
    "rank_stitched": "rank, stitched",
    "rank_receiver": "rank, receiver",
    "ood_score": "OOD score",
    "stitched_loss": "stitched loss",
    "train_loss": "train loss",
    "epochs": "epochs",
    "time_s": "time (s)",
}


def write_report(results: dict, path: str | os.PathLike) -> Path:
    """Write the report of ``results`` (a matrix.json dict) to ``path`` (.html), atomically, and
    return the path. Bad results or an unwritable path raise StitchError before any work."""
    check_results(results)
    check_output(path, ("html", "htm"))
    page = render_report(results)
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def render_report(results: dict) -> str:
    """The report page as a string (see the module docstring for what it holds)."""
    check_results(results)
    title = f"{_model(results, 'sender')} → {_model(results, 'receiver')}"
    parts = {
        "TITLE": html.escape(f"stitching matrix: {title}"),
        "STYLE": _STYLE,
        "RESULTS": _script_json(results),
        "VIEW": _script_json(_view(results)),
        "SCRIPT": _SCRIPT,
    }
    # one pass: a placeholder-like string inside the results is never substituted again
    return re.sub(r"__(TITLE|STYLE|RESULTS|VIEW|SCRIPT)__", lambda m: parts[m.group(1)], _PAGE)


def _model(results: dict, side: str) -> str:
    model = (results.get("models") or {}).get(side) or {}
    return str(model.get("spec") or (results.get("config") or {}).get(side) or side)


def _clean(obj: object) -> object:
    """JSON-safe: NaN/±inf become the strings "NaN"/"Infinity" (JSON.parse rejects them),
    numpy scalars and arrays become Python values, anything else unknown becomes its str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def _script_json(obj: object) -> str:
    """JSON to sit inside <script type="application/json">: nothing in it can end the element
    (``</script>``, ``<!--``) because no ``<`` or ``>`` is left; ``&`` and the JavaScript line
    separators are escaped too. ``JSON.parse`` reads the escapes back to the same strings."""
    text = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False)
    for char, escape in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _values(results: dict, metric: str) -> list[float | None]:
    """The value of ``metric`` for every cell, in ``results["cells"]`` order (None where it has
    none). CKA comes from the main ``cka`` grid (the one check_results validates) when there is
    one, else from the cell; every other metric only counts for cells whose status is ok."""
    grids = {"main": cka_grid(results, "main")}
    out: list[float | None] = []
    for cell in results["cells"]:
        value = _number(cell.get(metric))
        if metric == "cka":
            grid = grids.get(cell.get("variant", "main"))
            if grid is not None and np.isfinite(grid[cell["i"], cell["j"]]):
                value = float(grid[cell["i"], cell["j"]])
        elif cell.get("status", "ok") != "ok":
            value = None
        if value is not None and not math.isfinite(value):
            value = None
        out.append(value)
    return out


def _scale(metric: str, values: list[float | None]) -> dict:
    """The colour scale the PNG would use over these values: its ends and 17 colour stops."""
    finite = np.array([v for v in values if v is not None], dtype=float)
    norm, cmap = metric_scale(metric, finite)
    stops = [to_hex(cmap(k / 16)) for k in range(17)]
    return {"lo": float(norm.vmin), "hi": float(norm.vmax), "stops": stops}


def _view(results: dict) -> dict:
    """What the page needs beyond the results, derived here so that the page and the PNG agree:
    the metrics present with their labels, values per cell and colour scales; the variants in
    drawing order with titles; the family tags; each cell's convergence label."""
    metrics = []
    for metric, short in REPORT_METRICS.items():
        values = _values(results, metric)
        if any(v is not None for v in values):
            label = METRIC_LABELS.get(metric, metric.replace("_", " "))
            metrics.append(
                {
                    "key": metric,
                    "label": label,
                    "short": short,
                    "values": values,
                    "scale": _scale(metric, values),
                }
            )
    cells = results["cells"]
    tags = family_tags(c.get("family") for c in cells if c.get("status", "ok") == "ok")
    found = variants(results) or ["main"]
    return {
        "metrics": metrics,
        "variants": [{"key": v, "title": VARIANT_TITLES.get(v, v)} for v in found],
        "tags": tags,
        "convergence": [convergence_label(c) for c in cells],
        "diagnostics": list(DIAGNOSTICS),
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
__STYLE__
</style>
</head>
<body>
<script>
window.stitchErrors = [];
function stitchReportError(message) {
  window.stitchErrors.push(String(message));
  document.body.setAttribute("data-errors", String(window.stitchErrors.length));
  var box = document.getElementById("errors");
  if (box) {
    box.hidden = false;
    var item = document.createElement("li");
    item.textContent = String(message);
    box.querySelector("ul").appendChild(item);
  }
}
window.addEventListener("error", function (e) {
  stitchReportError(e.message + " (line " + e.lineno + ")");
});
window.addEventListener("unhandledrejection", function (e) {
  stitchReportError("unhandled rejection: " + e.reason);
});
</script>
<div id="errors" class="errors" hidden><strong>The report hit an error:</strong><ul></ul></div>
<noscript><p class="errors">This report draws itself with JavaScript: enable it to see
the matrix (the data is in this file's &lt;script id="results"&gt;).</p></noscript>
<header id="head"></header>
<nav class="toolbar" id="toolbar"></nav>
<main>
  <div id="matrices"><div id="panels"></div><section id="overview"></section></div>
  <aside id="details"></aside>
</main>
<section id="about"></section>
<script id="results" type="application/json">__RESULTS__</script>
<script id="view" type="application/json">__VIEW__</script>
<script>
__SCRIPT__
</script>
</body>
</html>
"""

_STYLE = r"""
:root { --ink: #1d2430; --muted: #5b6474; --line: #d9dde5; --paper: #fff; --bg: #f4f5f8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: var(--bg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { padding: 14px 24px 10px; background: var(--paper); border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 20px; overflow-wrap: anywhere; } h1 small { color: var(--muted); font-weight: 400; }
h2 { margin: 0; font-size: 15px; } h3 { margin: 0 0 4px; font-size: 15px; }
.sub, .hint { color: var(--muted); margin: 2px 0 8px; font-size: 12.5px; }
.notes { margin: 6px 0 0; padding-left: 18px; } .notes li { margin: 2px 0; }
.notes .cap { color: #b3400a; font-weight: 600; }
.toolbar { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 8px 22px;
  align-items: center; padding: 8px 24px; background: #eef0f4f2; border-bottom: 1px solid var(--line); }
.toolbar label { font-weight: 600; } .toolbar select { margin-left: 6px; font: inherit; }
.bar { display: inline-block; width: 160px; height: 12px; vertical-align: middle; margin: 0 6px;
  border-radius: 2px; }
.legend { color: var(--muted); font-size: 12.5px; }
main { display: grid; grid-template-columns: minmax(0, 1fr) 360px; gap: 16px; padding: 16px 24px; }
#panels { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.panel, aside, .card { background: var(--paper); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px; }
.panel { overflow-x: auto; max-width: 100%; }
table.heat { border-collapse: separate; border-spacing: 2px; margin-top: 6px; }
table.heat th { font-weight: 500; font-size: 12px; white-space: nowrap; }
th.row { text-align: right; padding-right: 6px; } th.row small, .dim { color: var(--muted); }
th.row small { display: block; font-size: 10.5px; }
th.col span { writing-mode: vertical-rl; transform: rotate(180deg); display: inline-block; }
th.col { vertical-align: bottom; padding-bottom: 4px; }
th.corner { font-size: 11px; color: var(--muted); text-align: left; vertical-align: bottom; }
td.cell { width: 60px; min-width: 60px; height: 46px; text-align: center; border-radius: 3px;
  position: relative; cursor: pointer; font-variant-numeric: tabular-nums; background: #eceef2; }
td.cell .v { display: block; font-size: 13.5px; font-weight: 600; }
td.cell .f { display: block; font-size: 10.5px; opacity: 0.9; }
td.cell.missing { background: #f7f7f9; border: 1px dashed #d6d9e0; cursor: default; }
td.cell.refused { background: #d3d3d3; color: #333; }
td.cell.failed { color: #333;
  background: repeating-linear-gradient(45deg, #d3d3d3 0 4px, #b9b9b9 4px 8px); }
td.cell.capped { outline: 2px dashed #e8590c; outline-offset: -2px; background-image:
  repeating-linear-gradient(135deg, rgba(255,255,255,.42) 0 3px, transparent 3px 9px); }
td.cell.capped .f { font-weight: 700; }
td.cell .warn { position: absolute; top: 1px; right: 4px; font-weight: 800; color: #c92a2a;
  text-shadow: 0 0 2px #fff; }
td.cell:hover, td.cell:focus { box-shadow: inset 0 0 0 2px #111; outline-color: #111; }
td.cell.pinned { box-shadow: inset 0 0 0 3px #111, 0 0 0 2px #fff; }
#overview { margin-top: 18px; } #overview .minis { display: flex; flex-wrap: wrap; gap: 12px; }
.mini-card { background: var(--paper); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px 8px; cursor: pointer; font-size: 12px; }
.mini-card.on { border-color: #111; box-shadow: 0 0 0 1px #111; }
table.mini { border-collapse: separate; border-spacing: 1px; margin-top: 4px; }
td.mini { width: 12px; height: 12px; background: #eceef2; }
aside { position: sticky; top: 56px; align-self: start; max-height: calc(100vh - 70px);
  overflow: auto; }
aside table, .card table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
aside td, aside th, .card td, .card th { border-top: 1px solid #eef0f3; padding: 3px 4px;
  text-align: left; vertical-align: top; }
aside th, .card th { color: var(--muted); font-weight: 500; width: 42%; }
aside h4 { margin: 12px 0 2px; font-size: 13px; }
.warning { background: #fff4e6; border-left: 3px solid #e8590c; padding: 4px 8px; }
figure { margin: 8px 0 0; } figcaption { font-size: 12px; color: var(--muted); }
svg.curve text { font-size: 10px; fill: #5b6474; }
#about { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 16px;
  padding: 0 24px 24px; } .card h2 { margin-bottom: 6px; }
code { font-size: 12px; word-break: break-all; }
.errors { margin: 0; padding: 8px 24px; background: #ffe3e3; color: #8a1c1c; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } aside { position: static; } }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const R = JSON.parse(document.getElementById("results").textContent);
  const V = JSON.parse(document.getElementById("view").textContent);
  const S = R.cuts.sender, C = R.cuts.receiver;
  const METRICS = {};
  V.metrics.forEach((m) => { METRICS[m.key] = m; });
  const index = {};  // variant -> "i/j" -> index in R.cells (a later cell replaces an earlier one)
  R.cells.forEach((c, k) => { (index[c.variant || "main"] ||= {})[c.i + "/" + c.j] = k; });
  const first = V.variants[0].key;
  const state = { metric: V.metrics.length ? V.metrics[0].key : null, sort: "cuts", cell: null };
  const SORTS = { cuts: "cut order", desc: "mean, high → low", asc: "mean, low → high" };
  const notices = [];

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(3)) {
      if (kid !== null && kid !== undefined && kid !== false) node.append(kid);
    }
    return node;
  }
  function svg(tag, attrs, ...kids) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    kids.forEach((kid) => node.append(kid));
    return node;
  }
  // append / replace children, skipping null, undefined and false (the DOM would print "null")
  const kept = (kids) => kids.flat().filter((k) => k !== null && k !== undefined && k !== false);
  const put = (node, ...kids) => node.append(...kept(kids));
  const fill = (node, ...kids) => node.replaceChildren(...kept(kids));
  const isNum = (v) => typeof v === "number" && isFinite(v);
  function fmt(v, key) {  // cell text: two decimals, one from 10, none from 100
    if (!isNum(v)) return v === null || v === undefined ? "–" : String(v);
    if (key === "epochs" || (Number.isInteger(v) && Math.abs(v) >= 10)) return String(v);
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }
  function long(v) {  // details: four significant digits
    if (isNum(v)) return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
    if (v === null || v === undefined) return "–";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  const hex = (h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16));
  function colour(m, v) {
    const s = m.scale, n = s.stops.length - 1;
    const t = Math.max(0, Math.min(1, (v - s.lo) / (s.hi - s.lo || 1)));
    const k = Math.min(Math.floor(t * n), n - 1), f = t * n - k;
    const a = hex(s.stops[k]), b = hex(s.stops[k + 1]);
    return a.map((c, q) => Math.round(c + (b[q] - c) * f));
  }
  const ink = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 > 0.55
    ? "#111" : "#fff";
  const shape = (cut) => (cut.shape ? cut.shape.join("×") : "");
  const variantTitle = (key) => (V.variants.find((v) => v.key === key) || { title: key }).title;
  const capped = (c) => c.converged === false || c.stop === "cap";

  function order(n, axis) {  // cut indices, sorted by their mean over the first variant
    const idx = [...Array(n).keys()];
    if (state.sort === "cuts" || !state.metric) return idx;
    const vals = METRICS[state.metric].values, sum = idx.map(() => [0, 0]);
    for (const [key, k] of Object.entries(index[first] || {})) {
      const p = Number(key.split("/")[axis]);
      if (isNum(vals[k])) { sum[p][0] += vals[k]; sum[p][1] += 1; }
    }
    const mean = (p) => (sum[p][1] ? sum[p][0] / sum[p][1] : NaN);
    const dir = state.sort === "asc" ? 1 : -1;
    return idx.sort((a, b) => {
      const x = mean(a), y = mean(b);
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y) || a - b;
      return dir * (x - y) || a - b;
    });
  }

  function td(variant, i, j, k, m) {
    const c = k === undefined ? null : R.cells[k];
    const status = c ? c.status || "ok" : "missing";
    const value = c && m ? m.values[k] : null;
    const attrs = {
      class: "cell " + status, "data-variant": variant, "data-i": i, "data-j": j,
      "data-metric": m ? m.key : "", "data-value": isNum(value) ? String(value) : "",
      "data-status": status, "data-family": (c && c.family) || "",
    };
    if (!c) return el("td", { ...attrs, title: S[i].name + " → " + C[j].name + ": not computed" });
    const conv = V.convergence[k];
    if (capped(c)) attrs.class += " capped";
    if (c.warning) attrs.class += " warned";
    if ("converged" in c) attrs["data-converged"] = String(c.converged);
    if (state.cell === variant + "/" + i + "/" + j) attrs.class += " pinned";
    attrs.title = S[i].name + " → " + C[j].name + (conv ? " · " + conv : "")
      + (c.warning ? " · warning: " + c.warning : "");
    const node = el("td", { ...attrs, "data-k": k, tabindex: 0 });
    let tag = status === "ok" ? V.tags[c.family] || "" : status;
    if (capped(c)) tag = (tag + " cap").trim();
    if (status !== "ok") node.append(el("span", { class: "v", text: "×" }));
    else if (!isNum(value)) node.append(el("span", { class: "v", text: "–" }));
    else {
      const rgb = colour(m, value);
      node.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
      node.style.color = ink(rgb);
      node.append(el("span", { class: "v", text: fmt(value, m.key) }));
    }
    node.append(el("span", { class: "f", text: tag }));
    if (c.warning) node.append(el("span", { class: "warn", text: "!" }));
    return node;
  }

  function panel(v, rows, cols) {
    const m = METRICS[state.metric], cells = index[v.key] || {};
    const mine = Object.values(cells).map((k) => R.cells[k]);
    const count = (s) => mine.filter((c) => (c.status || "ok") === s).length;
    const sub = [count("ok") + "/" + mine.length + " cells ok"];
    ["refused", "failed"].forEach((s) => { if (count(s)) sub.push(count(s) + " " + s); });
    const nCap = mine.filter(capped).length;
    if (nCap) sub.push(nCap + " hit the epoch cap");
    const base = (R.baselines || {})[v.key];
    if (base) {
      sub.push("own accuracy: sender " + fmt(base.sender_accuracy)
        + ", receiver " + fmt(base.receiver_accuracy));
    }
    const head = el("tr", {}, el("th", { class: "corner", text: "sender ↓ receiver →" }),
      cols.map((j) => el("th", { class: "col", "data-j": j, title: C[j].name + " " + shape(C[j]) },
        el("span", { text: C[j].name }))));
    const body = rows.map((i) => el("tr", { "data-i": i },
      el("th", { class: "row", title: S[i].name }, S[i].name, el("small", { text: shape(S[i]) })),
      cols.map((j) => td(v.key, i, j, cells[i + "/" + j], m))));
    return el("section", { class: "panel", "data-variant": v.key },
      el("h2", { text: v.title }), el("p", { class: "sub", text: sub.join(" · ") }),
      el("table", { class: "heat" }, el("thead", {}, head), el("tbody", {}, body)));
  }

  function overview() {  // one small heatmap per recorded metric (first variant)
    const box = document.getElementById("overview");
    box.replaceChildren();
    if (V.metrics.length < 2) return;
    box.append(el("h2", { text: "Every metric at a glance (" + variantTitle(first) + ")" }),
      el("p", { class: "hint", text: "Click one to show it above." }));
    const cells = index[first] || {};
    box.append(el("div", { class: "minis" }, V.metrics.map((m) => el("div", {
      class: "mini-card" + (m.key === state.metric ? " on" : ""), "data-metric": m.key,
      title: m.label, onclick: () => apply({ metric: m.key }, true),
    }, el("div", { text: m.short }), el("table", { class: "mini" }, S.map((_, i) =>
      el("tr", {}, C.map((_, j) => {
        const k = cells[i + "/" + j], v = k === undefined ? null : m.values[k];
        const cell = el("td", { class: "mini", "data-metric": m.key, "data-i": i, "data-j": j,
          "data-value": isNum(v) ? String(v) : "", title: S[i].name + " → " + C[j].name + ": "
          + fmt(v, m.key) });
        if (isNum(v)) cell.style.backgroundColor = "rgb(" + colour(m, v).join(",") + ")";
        return cell;
      }))))))));
  }

  function curve(values, label, unit) {  // a small line chart per epoch, as inline SVG
    const pts = (values || []).map((v, n) => [n, v]).filter((p) => isNum(p[1]));
    if (!pts.length) return null;
    const W = 300, H = 96, L = 40, Rt = 10, T = 8, B = 22, n = values.length;
    let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
    if (unit && lo >= 0 && hi <= 1) { lo = 0; hi = 1; }
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
    const x = (q) => L + (n > 1 ? q / (n - 1) : 0.5) * (W - L - Rt);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const text = (tx, ty, s, anchor) => svg("text", { x: tx, y: ty, "text-anchor": anchor },
      document.createTextNode(s));
    const chart = svg("svg", { class: "curve", width: W, height: H, viewBox: "0 0 " + W + " " + H,
      role: "img", "aria-label": label },
      svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#aab" }),
      svg("line", { x1: L, y1: H - B, x2: W - Rt, y2: H - B, stroke: "#aab" }),
      text(L - 4, T + 8, long(hi), "end"), text(L - 4, H - B, long(lo), "end"),
      text(x(0), H - 6, "1", "middle"), text(x(n - 1), H - 6, String(n), "middle"),
      text((L + W) / 2, H - 6, "epoch", "middle"),
      svg("polyline", { fill: "none", stroke: "#3b5bdb", "stroke-width": 2,
        points: pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") }));
    pts.forEach((p) => chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5,
      fill: "#3b5bdb" }, svg("title", {}, document.createTextNode(
      "epoch " + (p[0] + 1) + ": " + long(p[1]))))));
    return el("figure", { class: "curve", "data-curve": label }, el("figcaption", { text: label }),
      chart);
  }

  function rowsTable(rows) {
    const kept = rows.filter((r) => r[1] !== null && r[1] !== undefined && r[1] !== "");
    if (!kept.length) return null;
    return el("table", {}, kept.map(([k, v]) => el("tr", {}, el("th", { text: k }),
      el("td", { text: typeof v === "string" ? v : long(v) }))));
  }

  function details() {
    const box = document.getElementById("details");
    box.replaceChildren();
    const hint = "Hover over a cell to see its details; click a cell to keep them here.";
    const k = shown === null ? undefined : shown;
    if (k === undefined) { put(box, el("h3", { text: "Cell details" }), el("p", { class: "hint", text: hint })); return; }
    const c = R.cells[k], v = c.variant || "main", key = v + "/" + c.i + "/" + c.j;
    const used = new Set(["converged", "variant", "i", "j", "sender_cut", "receiver_cut", "val_curve", "train_curve"]);
    const pick = (name) => { used.add(name); return c[name]; };
    const metric = (name) => { used.add(name); return METRICS[name] ? METRICS[name].values[k] : c[name]; };
    box.setAttribute("data-cell", key);
    put(box, el("h3", { text: (c.sender_cut || S[c.i].name) + " → " + (c.receiver_cut || C[c.j].name) }),
      el("p", { class: "sub", text: variantTitle(v) + " · " + shape(S[c.i]) + " → " + shape(C[c.j])
        + (state.cell === key ? " · pinned (click it again to release)" : "") }));
    if (c.warning) put(box, el("p", { class: "warning", text: "warning: " + pick("warning") }));
    const family = pick("family") ? c.family + (V.tags[c.family] ? " (" + V.tags[c.family] + ")" : "") : null;
    put(box, rowsTable([["status", pick("status") || "ok"], ["reason", pick("reason")],
      ["family", family], ["why this family", pick("family_reason")], ["init", pick("init")],
      ["epochs", pick("epochs")], ["training", V.convergence[k]], ["stopped by", pick("stop")],
      ["fine-tuned", pick("fine_tuned")], ["from scratch", pick("from_scratch")]]));
    put(box, el("h4", { text: "Accuracy and loss" }), rowsTable(["init_accuracy",
      "stitched_accuracy", "receiver_accuracy", "penalty", "stitched_loss", "train_loss", "cka"]
      .map((name) => [METRIC_NAME(name), metric(name)])));
    const diag = rowsTable(V.diagnostics.map((name) => [METRIC_NAME(name), metric(name)]));
    if (diag) put(box, el("h4", { text: "Diagnostics" }), diag);
    put(box, curve(c.val_curve, "validation accuracy per epoch", true),
      curve(c.train_curve, "mean training loss per epoch", false));
    const times = rowsTable([["this cell (s)", pick("time_s")], ["its group (s)", pick("group_time_s")]]);
    if (times) put(box, el("h4", { text: "Time" }), times);
    const rest = rowsTable(Object.keys(c).filter((name) => !used.has(name)).map((name) => [name, c[name]]));
    if (rest) put(box, el("h4", { text: "Other fields" }), rest);
  }
  const METRIC_NAME = (name) => (METRICS[name] ? METRICS[name].short : name.replace(/_/g, " "));

  function flat(obj, prefix, out) {  // nested settings as "a.b" rows, lists of scalars joined
    for (const [k, v] of Object.entries(obj || {})) {
      const name = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && prefix.split(".").length < 3) flat(v, name, out);
      else if (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object")) out.push([name, v.join(", ")]);
      else out.push([name, v]);
    }
    return out;
  }

  function header() {
    const models = R.models || {}, data = R.data || {}, prov = R.provenance || {};
    const label = (side) => {
      const m = models[side] || {}, spec = m.spec || (R.config || {})[side] || side;
      return m.loaded_as && m.loaded_as !== spec ? spec + " (= " + m.loaded_as + ")" : spec;
    };
    const sizes = data.train_size !== undefined ? " (train " + data.train_size + ", test " + data.test_size + ")" : "";
    const facts = ["data: " + (data.name || (R.config || {}).data || "?") + sizes,
      "variants: " + V.variants.map((v) => v.key).join(", ")];
    if (prov.commit) facts.push("commit " + String(prov.commit).slice(0, 12));
    if (prov.created) facts.push("created " + prov.created);
    const notes = [], cells = R.cells, conv = V.convergence;
    const nCap = cells.filter(capped).length, nWarn = cells.filter((c) => c.warning).length;
    if (nCap) notes.push(el("li", { class: "cap", text: nCap + " cell(s) hit the epoch cap: not converged (dashed outline, striped, tagged “cap”)." }));
    const fixed = conv.filter((s) => s === "not converged (fixed epochs)").length;
    if (fixed) notes.push(el("li", { text: fixed + " cell(s) trained a fixed number of epochs without a convergence check: not converged (fixed epochs)." }));
    if (nWarn) notes.push(el("li", { text: nWarn + " cell(s) carry a warning (marked “!”)." }));
    if (!cells.length) notes.push(el("li", { text: "No cell has been computed yet." }));
    notices.forEach((t) => notes.push(el("li", { text: t })));
    fill(document.getElementById("head"),
      el("h1", {}, el("small", { text: "stitching matrix  " }), label("sender") + "  →  " + label("receiver")),
      el("p", { class: "sub", text: facts.join(" · ") }), notes.length ? el("ul", { class: "notes" }, notes) : null);
  }

  function toolbar() {
    const bar = document.getElementById("toolbar");
    const m = METRICS[state.metric];
    const select = (id, options, value) => el("select", { id: id, onchange: (e) => apply({ [id]: e.target.value }, true) },
      options.map(([k, t]) => el("option", { value: k, text: t, selected: k === value && "selected" })));
    const tags = Object.entries(V.tags).map(([f, t]) => t + " = " + f).join(", ");
    fill(bar,
      el("label", {}, "Metric", select("metric", V.metrics.map((x) => [x.key, x.label]), state.metric)),
      el("label", {}, "Sort cuts", select("sort", Object.entries(SORTS), state.sort)),
      m ? el("span", { class: "legend", id: "scale" }, fmt(m.scale.lo, m.key),
        el("span", { class: "bar", style: "background: linear-gradient(to right, " + m.scale.stops.join(", ") + ")" }),
        fmt(m.scale.hi, m.key)) : null,
      tags ? el("span", { class: "legend", text: "family: " + tags }) : null,
      el("span", { class: "legend", text: "× refused/failed · – no value · ! warning · dashed + cap: hit the epoch cap" }));
  }

  function about() {
    const card = (title, rows) => (rows.length ? el("section", { class: "card" }, el("h2", { text: title }), rowsTable(rows)) : null);
    const cuts = (side) => (R.cuts[side] || []).map((c) => [c.name, shape(c) + (c.layout ? " " + c.layout : "")]);
    fill(document.getElementById("about"), [
      card("Provenance", flat(R.provenance, "", [])), card("Runtime", flat(R.runtime, "", [])),
      card("Data", flat(R.data, "", [])),
      card("Models", flat(R.models, "", [])), card("Configuration", flat(R.config, "", [])),
      card("Baselines (own accuracy)", flat(R.baselines, "", [])), card("Timings", flat(R.timings, "", [])),
      card("Versions", flat(R.versions, "", [])), card("Sender cuts", cuts("sender")),
      card("Receiver cuts", cuts("receiver")),
    ].filter(Boolean));
  }

  let shown = null;  // the cell index the details show (hovered, else pinned)
  function pinnedIndex() {
    if (!state.cell) return null;
    const [v, i, j] = state.cell.split("/");
    const k = (index[v] || {})[i + "/" + j];
    return k === undefined ? null : k;
  }
  function render() {
    header();
    toolbar();
    const rows = order(S.length, 0), cols = order(C.length, 1);
    document.getElementById("panels").replaceChildren(...V.variants.map((v) => panel(v, rows, cols)));
    overview();
    shown = pinnedIndex();
    details();
    document.body.setAttribute("data-metric", state.metric || "");
    document.body.setAttribute("data-sort", state.sort);
  }
  function writeHash() {
    const p = new URLSearchParams();
    if (state.metric) p.set("metric", state.metric);
    if (state.sort !== "cuts") p.set("sort", state.sort);
    if (state.cell) p.set("cell", state.cell);
    const hash = "#" + p.toString();
    try {
      if (location.hash !== hash) history.replaceState(null, "", hash);
    } catch (e) { /* a sandboxed frame: the view still changes, the URL does not */ }
  }
  // The one way the view changes: the URL hash at load, the controls and clicks all land here.
  function apply(changes, write) {
    if (changes.metric !== undefined) {
      if (METRICS[changes.metric]) state.metric = changes.metric;
      else notices.push("This matrix records no metric “" + changes.metric + "”; showing " + state.metric + ".");
    }
    if (changes.sort !== undefined) state.sort = SORTS[changes.sort] ? changes.sort : "cuts";
    if (changes.cell !== undefined) state.cell = changes.cell || null;
    render();
    if (write) writeHash();
  }
  function fromHash() {
    const p = new URLSearchParams(location.hash.slice(1)), out = {};
    ["metric", "sort", "cell"].forEach((k) => { if (p.has(k)) out[k] = p.get(k); });
    return out;
  }

  // Hover or focus shows a cell's details; a click (or Enter) pins them, again releases them.
  const matrices = document.getElementById("matrices");
  const target = (e) => e.target.closest("td.cell[data-k]");
  const show = (k) => { if (shown !== k) { shown = k; details(); } };
  const pin = (t) => {
    const key = t.dataset.variant + "/" + t.dataset.i + "/" + t.dataset.j;
    apply({ cell: state.cell === key ? "" : key }, true);
  };
  ["mouseover", "focusin"].forEach((type) => matrices.addEventListener(type, (e) => {
    const t = target(e);
    if (t) show(Number(t.dataset.k));
  }));
  matrices.addEventListener("mouseleave", () => show(pinnedIndex()));
  matrices.addEventListener("click", (e) => { const t = target(e); if (t) pin(t); });
  matrices.addEventListener("keydown", (e) => {
    const t = target(e);
    if (t && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); pin(t); }
  });
  window.addEventListener("hashchange", () => apply(fromHash(), false));
  apply(fromHash(), false);
  about();
  document.body.setAttribute("data-rendered", "1");
})();
"""
