"""Heatmaps and CSV from a hand-built matrix.json, and ``stitch plot DIR``."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import stitchcore.cli.plot_cmd  # noqa: F401  (registers `stitch plot` until commands.py does)
from stitchcore.cli.main import cli
from stitchcore.errors import StitchError
from stitchcore.plot import CSV_COLUMNS, plot_matrix, write_csv

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


def _cell_texts(ax) -> dict[tuple[int, int], str]:
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
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
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "heatmap.png").exists()


def test_cli_plot_missing_directory(tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such matrix directory" in result.output
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "--metric", "bogus"])
    assert result.exit_code == 2 and "bogus" in result.output
