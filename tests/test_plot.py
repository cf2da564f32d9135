"""Heatmaps and CSV from a hand-built matrix.json, ``stitch plot DIR``, and the CLI's tables
(``print_matrix``, ``stitch plugins``) when piped."""

from __future__ import annotations

import copy
import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import stitchcore.plot
from stitchcore.cli import commands  # noqa: F401  (registers the subcommands)
from stitchcore.cli.main import cli
from stitchcore.cli.tables import print_matrix
from stitchcore.errors import StitchError
from stitchcore.plot import CSV_COLUMNS, DIAGNOSTICS, family_tags, plot_matrix, write_csv

SENDER_CUTS = [("act1", [64, 16, 16]), ("layer1", [64, 8, 8]), ("layer2", [128, 4, 4])]
RECEIVER_CUTS = [
    ("act1", [64, 16, 16]),
    ("layer1", [64, 8, 8]),
    ("layer2", [128, 4, 4]),
    ("layer3", [256, 2, 2]),
]
VARIANTS = ["main", "random-sender", "random-receiver"]


def _cut(index: int, name: str, shape: list[int]) -> dict:
    return {
        "name": name,
        "node": name,
        "index": index,
        "shape": shape,
        "layout": "nchw",
        "dtype": "float32",
        "prefix_tokens": 0,
    }


def _cell(variant: str, i: int, j: int, acc: float, receiver_acc: float, **extra) -> dict:
    cell = {
        "variant": variant,
        "i": i,
        "j": j,
        "sender_cut": SENDER_CUTS[i][0],
        "receiver_cut": RECEIVER_CUTS[j][0],
        "status": "ok",
        "reason": None,
        "family": "conv1x1" if SENDER_CUTS[i][1][1] == RECEIVER_CUTS[j][1][1] else "strided_conv",
        "family_reason": "same spatial size",
        "stitched_accuracy": acc,
        "stitched_loss": 1.0 - acc,
        "init_accuracy": acc * 0.8,
        "receiver_accuracy": receiver_acc,
        "penalty": receiver_acc - acc,
        "train_loss": 0.1,
        "epochs": 2,
        "time_s": 1.5,
    }
    cell.update(extra)
    return cell


@pytest.fixture
def results() -> dict:
    """A 3×4 matrix with three variants: main has a refused cell (no family can upsample
    layer2 → act1), a failed one (diverged) and a missing one; controls are partial."""
    baselines = {
        "main": {"sender_accuracy": 0.97, "receiver_accuracy": 0.96},
        "random-sender": {"sender_accuracy": 0.1, "receiver_accuracy": 0.96},
        "random-receiver": {"sender_accuracy": 0.97, "receiver_accuracy": 0.09},
    }
    cells = []
    for i in range(3):
        for j in range(4):
            if (i, j) == (2, 0):
                cells.append(
                    _cell("main", i, j, 0.0, 0.96, status="refused", stitched_accuracy=None)
                    | {"reason": "no family upsamples 4x4 → 16x16", "penalty": None}
                )
            elif (i, j) == (1, 3):
                cells.append(
                    _cell("main", i, j, 0.0, 0.96, status="failed", reason="loss is NaN")
                    | {"stitched_accuracy": None, "penalty": None}
                )
            elif (i, j) == (0, 3):
                continue  # not computed yet
            else:
                cells.append(_cell("main", i, j, 0.95 - 0.2 * abs(i - j), 0.96))
    cells += [_cell("random-sender", i, i, 0.3 + 0.1 * i, 0.96) for i in range(3)]
    cells += [_cell("random-receiver", i, 1, 0.1, 0.09) for i in range(3)]
    cka = [[round(1.0 - 0.25 * abs(i - j), 3) for j in range(4)] for i in range(3)]
    cka[0][3] = None
    return {
        "schema": "stitchcore.matrix/1",
        "config": {
            "sender": "timm:resnet18",
            "receiver": "timm:resnet34",
            "data": "digits",
            "controls": VARIANTS[1:],
        },
        "models": {
            "sender": {"spec": "timm:resnet18", "loaded_as": "zoo:resnet18-digits-s0-e4"},
            "receiver": {"spec": "timm:resnet34", "loaded_as": "zoo:resnet34-digits-s0-e4"},
        },
        "cuts": {
            "sender": [_cut(k, n, s) for k, (n, s) in enumerate(SENDER_CUTS)],
            "receiver": [_cut(k, n, s) for k, (n, s) in enumerate(RECEIVER_CUTS)],
        },
        "data": {"name": "digits", "train_size": 1437, "test_size": 360, "num_classes": 10},
        "variants": VARIANTS,
        "baselines": baselines,
        "cells": cells,
        "cka": {"main": cka},
        "versions": {"stitchcore": "0.1.0"},
        "timings": {},
    }


def _panel(fig, variant: str):
    (ax,) = [a for a in fig.axes if a.get_label() == f"panel:{variant}"]
    return ax


def _cell_texts(ax, kind: tuple[str, ...] = ("value", "mark")) -> dict[tuple[int, int], str]:
    """Cell texts by (row, column): the values and "×"/"–" marks, or (``kind=("family",)``)
    the family tags drawn under the values."""
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in ax.texts
        if t.get_label() in kind
    }


def test_plot_matrix_draws_one_panel_per_variant_plus_cka(results, tmp_path):
    path = tmp_path / "heatmap.png"
    fig = plot_matrix(results, path)

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 300
    panels = [a.get_label() for a in fig.axes if a.get_label().startswith("panel:")]
    assert panels == ["panel:main", "panel:random-sender", "panel:random-receiver", "panel:cka"]
    colorbars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(colorbars) == 4 and len(fig.axes) == 8

    main = _panel(fig, "main")
    assert main.get_ylabel().replace("\n", " ") == "sender cut (timm:resnet18)"
    assert main.get_xlabel().replace("\n", " ") == "receiver cut (timm:resnet34)"
    rows = [t.get_text() for t in main.get_yticklabels()]
    assert rows[0].startswith("act1") and rows[2].startswith("layer2")
    assert [t.get_text().split()[0] for t in main.get_xticklabels()] == [
        n for n, _ in RECEIVER_CUTS
    ]
    assert main.get_ylim()[0] > main.get_ylim()[1]  # first sender cut at the top

    texts = _cell_texts(main)
    assert texts[(0, 0)] == "0.95" and texts[(1, 2)] == "0.75"
    assert texts[(2, 0)] == "×" and texts[(1, 3)] == "×"  # refused and failed
    assert (0, 3) not in texts  # missing: blank
    hatched = [p for p in main.patches if p.get_hatch()]
    assert len(main.patches) == 2 and len(hatched) == 1  # only the failed cell is hatched
    assert "9/12 ok, 1 refused, 1 failed" in main.get_title()

    assert len(_cell_texts(_panel(fig, "random-sender"))) == 3
    # Accuracy panels share the 0-1 scale.
    for variant in VARIANTS:
        assert _panel(fig, variant).images[0].norm.vmin == 0.0
        assert _panel(fig, variant).images[0].norm.vmax == 1.0
    cka_texts = _cell_texts(_panel(fig, "cka"))
    assert cka_texts[(0, 0)] == "1.00" and (0, 3) not in cka_texts

    title = fig.get_suptitle()
    assert "timm:resnet18 (= zoo:resnet18-digits-s0-e4)" in title and "digits" in title
    assert "sender 0.970" in title and "receiver 0.960" in title


def test_penalty_uses_a_diverging_map_centred_at_zero(results, tmp_path):
    fig = plot_matrix(results, tmp_path / "penalty.png", metric="penalty")
    image = _panel(fig, "main").images[0]
    assert image.norm.vmin == pytest.approx(-image.norm.vmax)
    assert image.norm.vmax == pytest.approx(0.45)  # largest |penalty| 0.41, rounded up
    # Near-zero penalties (the random receiver is as bad alone as stitched) stay pale.
    assert _panel(fig, "random-receiver").images[0].norm.vmax == pytest.approx(0.1)
    assert image.cmap.name.startswith("RdBu_r")
    assert _cell_texts(_panel(fig, "main"))[(0, 0)] == "0.01"
    assert "penalty" in fig.get_suptitle()


def test_ok_cell_without_the_metric_is_marked_not_blank(results, tmp_path):
    results["cells"][0]["init_accuracy"] = None  # main (0, 0)
    fig = plot_matrix(results, None, metric="init_accuracy")
    texts = _cell_texts(_panel(fig, "main"))
    assert texts[(0, 0)] == "–" and texts[(0, 1)] == "0.60" and (0, 3) not in texts


def test_plot_without_cka_or_cells_still_draws(results, tmp_path):
    del results["cka"]
    results["cells"] = []
    results["variants"] = ["main"]
    fig = plot_matrix(results, tmp_path / "empty.svg")
    assert (tmp_path / "empty.svg").read_text().lstrip().startswith("<?xml")
    assert len(fig.axes) == 2 and not _cell_texts(_panel(fig, "main"))


def test_write_csv_has_one_row_per_cell_with_its_cka(results, tmp_path):
    path = tmp_path / "matrix.csv"
    assert write_csv(results, path) == len(results["cells"]) == 17
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 17
    assert list(rows[0])[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert list(rows[0])[-1] == "cka"
    assert [r["variant"] for r in rows[:10]] == ["main"] * 10
    by_pos = {(r["variant"], int(r["i"]), int(r["j"])): r for r in rows}
    assert float(by_pos["main", 1, 2]["cka"]) == pytest.approx(0.75)
    assert float(by_pos["main", 1, 2]["stitched_accuracy"]) == pytest.approx(0.75)
    refused = by_pos["main", 2, 0]
    assert refused["status"] == "refused" and refused["stitched_accuracy"] == ""
    assert refused["reason"].startswith("no family upsamples")
    assert by_pos["main", 1, 3]["reason"] == "loss is NaN"
    assert by_pos["random-sender", 0, 0]["cka"] == ""  # no CKA for the controls here


def test_write_csv_falls_back_to_the_cells_own_cka(results, tmp_path):
    results["cells"][0]["cka"] = 0.42  # main (0, 0): the cka grid wins
    results["cells"][-1]["cka"] = 0.17  # a control: only the cell knows
    write_csv(results, tmp_path / "m.csv")
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]).count("cka") == 1
    assert float(rows[0]["cka"]) == 1.0 and float(rows[-1]["cka"]) == 0.17


def test_bad_results_raise_stitch_error(results, tmp_path):
    broken = copy.deepcopy(results)
    broken["cells"][0]["j"] = 9
    with pytest.raises(StitchError, match="outside the 3×4 cut grid"):
        plot_matrix(broken, tmp_path / "x.png")
    with pytest.raises(StitchError, match="schema"):
        write_csv({**results, "schema": "other/2"}, tmp_path / "x.csv")
    with pytest.raises(StitchError, match="cuts.sender"):
        plot_matrix({"cells": []}, None)
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_redraws_heatmap_and_csv(results, tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps(results))
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heatmap.png").stat().st_size > 10_000
    with open(tmp_path / "matrix.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 17

    out = tmp_path / "figs" / "penalty.png"
    result = CliRunner().invoke(
        cli, ["plot", str(tmp_path), "--metric", "penalty", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "PNG"
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert pixels.std() > 10  # not a blank canvas


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "has no matrix.json"),
        (lambda d: (d / "matrix.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "matrix.json").write_text('{"schema": "x/9"}'), "schema 'x/9'"),
        (lambda d: (d / "matrix.json").write_text("[1, 2]"), "must be a JSON object"),
    ],
)
def test_cli_plot_errors_exit_2_with_one_line(tmp_path, setup, message):
    setup(tmp_path)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert_one_error_line(result, message)
    assert not (tmp_path / "heatmap.png").exists()


def assert_one_error_line(result, message: str) -> None:
    """The whole output (stdout and stderr) is exactly one line, "Error: …" naming the fault."""
    lines = result.output.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and message in lines[0], lines


def test_cli_plot_missing_directory(tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert_one_error_line(result, "no such matrix directory")
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--metric", "bogus"])
    assert result.exit_code == 2 and "bogus" in result.output


# ----------------------------------------------------------------------------- newer cell fields
def _with_diagnostics(results: dict) -> dict:
    """The fixture with the fields newer engines record: diagnostics, convergence, curves; main
    (0, 1) and random-sender (1, 1) hit the epoch cap, every other cell stopped on a plateau."""
    results = copy.deepcopy(results)
    rng = np.random.default_rng(0)
    for c in results["cells"]:
        if c["status"] != "ok":
            continue
        capped = (c["variant"], c["i"], c["j"]) in {("main", 0, 1), ("random-sender", 1, 1)}
        c.update(
            agreement=float(rng.uniform(0.5, 1)), match_r2=float(rng.uniform(-0.3, 1)),
            rank_stitched=float(rng.uniform(4, 40)), rank_receiver=float(rng.uniform(4, 40)),
            ood_score=float(rng.uniform(0.9, 3)), converged=not capped,
            stop="cap" if capped else "plateau", val_curve=[0.5, 0.9], train_curve=[1.0, 0.4],
        )  # fmt: skip
    return results


def test_each_cell_shows_its_family_tag_with_a_legend(results):
    fig = plot_matrix(results, None)
    tags = _cell_texts(_panel(fig, "main"), ("family",))
    assert tags[(0, 0)] == "1×1" and tags[(0, 1)] == "str"  # conv1x1, strided_conv
    assert (2, 0) not in tags and (1, 3) not in tags  # refused / failed: no family drawn
    assert len(tags) == 9  # one per computed ok cell
    values = _cell_texts(_panel(fig, "main"), ("value",))
    value_y = {t.get_label(): t.get_position()[1] for t in _panel(fig, "main").texts[:2]}
    assert value_y["family"] > value_y["value"]  # the tag sits under the value
    assert values[(0, 0)] == "0.95"
    legend = fig.supxlabel_text if hasattr(fig, "supxlabel_text") else fig._supxlabel
    assert "1×1 = conv1x1" in legend.get_text().replace("\n", " ")
    assert "str = strided_conv" in legend.get_text().replace("\n", " ")


def test_family_tags_are_unique_and_short():
    tags = family_tags(["conv1x1", "low_rank", "lowrank", "lowrankx", "linear", None])
    assert tags["conv1x1"] == "1×1" and tags["linear"] == "lin" and tags["low_rank"] == "lr"
    assert len(set(tags.values())) == len(tags) == 5
    assert all(len(t) <= 5 for t in tags.values())


def test_capped_cells_are_hatched_and_tagged(results):
    fig = plot_matrix(_with_diagnostics(results), None)
    main = _panel(fig, "main")
    caps = [p for p in main.patches if p.get_label() == "cap"]
    assert len(caps) == 1 and caps[0].get_hatch() and caps[0].get_xy() == (0.5, -0.5)
    assert _cell_texts(main, ("family",))[(0, 1)] == "str cap"
    assert _cell_texts(main, ("family",))[(0, 0)] == "1×1"
    assert [p.get_label() for p in _panel(fig, "random-sender").patches] == ["cap"]
    footnote = fig._supxlabel.get_text().replace("\n", " ")
    assert "hit the epoch cap (not converged)" in footnote
    assert "fixed epochs" not in footnote

    fixed = copy.deepcopy(results)
    for c in fixed["cells"]:
        c.update(converged=None, stop="fixed")
    fig = plot_matrix(fixed, None)
    footnote = fig._supxlabel.get_text().replace("\n", " ")
    assert "not converged (fixed epochs)" in footnote and "hit the epoch cap" not in footnote
    assert not [p for p in _panel(fig, "main").patches if p.get_label() == "cap"]


LONG_SENDER = "timm:vit_tiny_patch16_224"
LONG_RECEIVER = "hf:facebook/dinov2-small-imagenet1k-1-layer"


@pytest.mark.parametrize("controls", [True, False])
def test_long_model_names_wrap_whole_and_stay_inside_the_figure(results, controls):
    results["models"]["sender"] = {"spec": LONG_SENDER, "loaded_as": f"zoo:{LONG_SENDER}-d-s0-e3"}
    results["models"]["receiver"] = {"spec": LONG_RECEIVER, "loaded_as": "zoo:x-" + "y" * 40}
    if not controls:  # one narrow panel plus CKA: the title must wrap
        results["cells"] = [c for c in results["cells"] if c["variant"] == "main"]
        results["variants"] = ["main"]
    fig = plot_matrix(results, None)
    main = _panel(fig, "main")
    words = main.get_ylabel().split() + main.get_xlabel().split()
    assert f"({LONG_SENDER})" in words and f"({LONG_RECEIVER})" in words  # never broken
    title = fig.get_suptitle()
    for word in (LONG_SENDER, f"zoo:{LONG_SENDER}-d-s0-e3)", LONG_RECEIVER):
        assert word in title.split(), title  # wrapped at spaces only
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width = fig.bbox.width
    for text in (fig._suptitle, fig._supxlabel, main.xaxis.label, main.yaxis.label):
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, (text.get_text(), box, width)


@pytest.mark.parametrize("metric", DIAGNOSTICS)
def test_cli_plot_draws_each_diagnostic(results, tmp_path, metric):
    (tmp_path / "matrix.json").write_text(json.dumps(_with_diagnostics(results)))
    out = tmp_path / f"{metric}.png"
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--metric", metric, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    fig = plot_matrix(_with_diagnostics(results), None, metric=metric)
    main = _panel(fig, "main")
    cell = next(c for c in _with_diagnostics(results)["cells"] if c["i"] == 0 and c["j"] == 0)
    shown = _cell_texts(main, ("value",))[(0, 0)]
    assert float(shown) == pytest.approx(cell[metric], abs=0.051)
    norm = main.images[0].norm
    if metric == "agreement":
        assert (norm.vmin, norm.vmax) == (0.0, 1.0)
    if metric == "match_r2":
        assert norm.vmax == 1.0 and -1.0 <= norm.vmin <= 0.0
    if metric == "ood_score":
        assert norm.vmin <= 1.0 and main.images[0].cmap.name.startswith("viridis_r")


def test_cli_plot_a_diagnostic_an_old_matrix_lacks_is_one_line(results, tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps(results))
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--metric", "ood_score"])
    assert result.exit_code == 2
    assert_one_error_line(result, "no cell of this matrix records 'ood_score'")
    assert not (tmp_path / "heatmap.png").exists()


@pytest.mark.parametrize(
    "out, message",
    [
        ("afile/heat.png", "afile is not a directory"),
        ("heat.xyz", "unknown file type '.xyz'"),
        ("heat", "unknown file type '(no suffix)'"),
        ("adir.png", "is a directory"),
    ],
)
def test_cli_plot_unwritable_out_fails_before_drawing(results, tmp_path, monkeypatch, out, message):
    (tmp_path / "matrix.json").write_text(json.dumps(results))
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.png").mkdir()

    def no_drawing(*args, **kwargs):
        raise AssertionError("a figure was built before the output was checked")

    monkeypatch.setattr(stitchcore.plot, "Figure", no_drawing)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--out", str(tmp_path / out)])
    assert result.exit_code == 2
    assert_one_error_line(result, message)
    assert not (tmp_path / "matrix.csv").exists()
    with pytest.raises(StitchError, match="unknown file type"):
        plot_matrix(results, tmp_path / "x.doc")


# ----------------------------------------------------------------------------- tables
LONG_CUT = "blocks.11.attention.output.dense_projection"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_matrix_table_piped_is_plain_text_with_every_name_whole(results):
    results = _with_diagnostics(results)
    results["cuts"]["receiver"][3]["name"] = LONG_CUT
    (warned,) = [c for c in results["cells"] if (c["variant"], c["i"], c["j"]) == ("main", 0, 1)]
    warned["warning"] = "at chance and loss rose"
    out = io.StringIO()
    print_matrix(results, file=out)
    text = out.getvalue()
    assert "…" not in text and not set("┃│━─┏") & set(text)  # not cut, no box drawing
    lines = text.splitlines()
    assert lines[0].startswith("main: stitched accuracy (rows: sender timm:resnet18")
    header = lines[1].split()
    assert header[-4:] == ["act1", "layer1", "layer2", LONG_CUT]
    row = lines[2].split()
    assert row[0] == "act1" and row[1] == "95.0%" and row[2] == "75.0%‡!"  # capped, warned
    assert "‡ hit the epoch cap: not converged" in lines
    assert "! warning (see matrix.csv or report.html)" in lines
    assert lines[3].split()[-1] == "failed" and lines[4].split()[1] == "refused"
    assert (
        sum(line.startswith(("main:", "random-sender:", "random-receiver:")) for line in lines) == 3
    )


def test_matrix_table_on_a_terminal_folds_but_never_cuts(results, monkeypatch):
    results["cuts"]["receiver"][3]["name"] = LONG_CUT
    monkeypatch.setenv("COLUMNS", "200")  # wide: the name on one line
    out = _Terminal()
    print_matrix(results, file=out)
    assert "┃" in out.getvalue() and LONG_CUT in out.getvalue()
    monkeypatch.setenv("COLUMNS", "50")  # narrow: folded over lines, not cut
    out = _Terminal()
    print_matrix(results, file=out)
    assert "┃" in out.getvalue() and "…" not in out.getvalue()


def test_stitch_plugins_piped_prints_every_hook_name_whole():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and "┃" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "stitchcore plugins" and lines[1].split() == [
        "plugin",
        "package",
        "hooks",
        "registered",
    ]
    rows = {line.split()[0]: line for line in lines[2:]}
    for name in ("register_datasets", "register_stitch_families", "register_model_sources"):
        assert any(name in row.split(", ") or f" {name}" in row for row in rows.values()), name
    assert "conv1x1" in rows["families"] and "upsample_conv" in rows["families"]
