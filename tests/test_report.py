"""``report.html`` (stitchcore.report, ``stitch report``) opened in a real headless Chromium.

The main tests use a real matrix computed once per session on two small ResNets trained on
digits (the ``digits_pair`` fixture); one test adds synthetic convergence fields to a copy of
its cells (capped cells, a warning, curves) to check they render. Chromium is the Debian
package ``chromium`` (installed by .ci/run); when it is missing these tests FAIL, they do not
skip, so a CI without a browser cannot pass silently.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stitchcore import MatrixConfig, StitchConfig, run_matrix
from stitchcore.cli import commands  # noqa: F401  (registers the subcommands)
from stitchcore.cli.main import cli
from stitchcore.plot import family_tags
from stitchcore.report import _script_json, render_report, write_report

DIAGNOSTICS = ("agreement", "match_r2", "rank_stitched", "rank_receiver", "ood_score")
NEW_CELL_FIELDS = (*DIAGNOSTICS, "converged", "stop", "val_curve", "train_curve", "init", "warning")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def real_results(digits_pair, tmp_path_factory) -> dict:
    """A real 3×3 matrix with a random-sender control (conv1x1, strided and upsampling cells)."""
    a, b = digits_pair
    cfg = MatrixConfig(
        sender=a.spec,
        receiver=b.spec,
        sender_cuts=["act1", "layer1", "layer2"],
        receiver_cuts=["layer1", "layer2", "layer3"],
        data="digits",
        train_size=400,
        controls=["random-sender"],
        stitch=StitchConfig(epochs=1),
    )
    results = run_matrix(cfg, tmp_path_factory.mktemp("report") / "m")
    assert len(results["cells"]) == 2 * 3 * 3
    return results


def _chromium_exe() -> str:
    for name in (os.environ.get("STITCHCORE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail(
        "headless Chromium is needed for the report tests: install the Debian package "
        "`chromium` (.ci/run does) or set STITCHCORE_CHROMIUM to a Chromium binary"
    )


def chromium(page: Path, tmp_path: Path, *flags: str, hash_: str = "") -> tuple[str, str]:
    """Run headless Chromium on ``page`` (with ``#hash_``); returns (stdout, stderr)."""
    cmd = [
        _chromium_exe(), "--headless", "--disable-gpu", "--no-sandbox",
        "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--hide-scrollbars", "--mute-audio",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr", "--v=0", *flags,
        page.resolve().as_uri() + (f"#{hash_}" if hash_ else ""),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, run.stderr


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console (errors included), from Chromium's log."""
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)


class Dom(HTMLParser):
    """The dumped DOM as a flat list of elements: (tag, attrs, text inside, element path)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.feed(text)

    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr", "area"}

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self.stack)}
        self.elements.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": "", "parents": []})

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data

    def find(self, tag: str, cls: str | None = None, **attrs) -> list[dict]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag
            and (cls is None or cls in e["attrs"].get("class", "").split())
            and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def body(self) -> dict:
        (body,) = self.find("body")
        return body


def render(results: dict, tmp_path: Path, hash_: str = "", name: str = "report.html") -> Dom:
    """Write the report, load it in Chromium, check it drew without any error; the DOM."""
    page = write_report(results, tmp_path / name)
    dom_text, stderr = chromium(page, tmp_path, "--dump-dom", hash_=hash_)
    dom = Dom(dom_text)
    assert console_messages(stderr) == [], console_messages(stderr)
    body = dom.body()["attrs"]
    assert body.get("data-rendered") == "1" and "data-errors" not in body, body
    for part in (*dom.find("header"), *dom.find("nav"), *dom.find("main"), *dom.find("section")):
        for slip in ("null", "undefined", "NaN", "[object"):  # what a JS slip prints
            assert slip not in part["text"], (slip, part["text"][:300])
    return dom


def latest_cells(results: dict) -> dict[tuple[str, int, int], dict]:
    return {(c["variant"], c["i"], c["j"]): c for c in results["cells"]}


def shown_cells(dom: Dom) -> dict[tuple[str, int, int], dict]:
    cells = {}
    for e in dom.find("td", "cell"):
        a = e["attrs"]
        key = (a["data-variant"], int(a["data-i"]), int(a["data-j"]))
        assert key not in cells, f"{key} drawn twice"
        cells[key] = e
    return cells


# ----------------------------------------------------------------------------- the real run
def test_every_cell_is_in_the_page_with_its_value(real_results, tmp_path):
    dom = render(real_results, tmp_path)
    cells = shown_cells(dom)
    expected = latest_cells(real_results)
    assert set(cells) == set(expected) and len(cells) == 18
    for key, cell in expected.items():
        a, text = cells[key]["attrs"], cells[key]["text"]
        assert a["data-metric"] == "stitched_accuracy" and a["data-status"] == cell["status"]
        assert float(a["data-value"]) == pytest.approx(cell["stitched_accuracy"], abs=1e-12)
        assert f"{cell['stitched_accuracy']:.2f}" in text  # the number is visible
        assert a["data-family"] == cell["family"]
    families = {c["family"] for c in expected.values()}
    assert {"conv1x1", "strided_conv"} < families  # and one that upsamples
    tags = family_tags(families)
    assert tags["conv1x1"] == "1×1" and tags["strided_conv"] == "str"
    for key, cell in expected.items():
        assert tags[cell["family"]] in cells[key]["text"]  # the family is visible in the cell
    legend = dom.find("nav")[0]["text"]
    assert all(f"{tag} = {family}" in legend for family, tag in tags.items())
    # controls beside the main matrix, with their titles; the models, data, commit, versions
    panels = [e["attrs"]["data-variant"] for e in dom.find("section", "panel")]
    assert panels == ["main", "random-sender"]
    head = dom.find("header")[0]["text"]
    assert real_results["models"]["sender"]["spec"] in head and "data: digits" in head
    about = dom.find("section", id="about")[0]["text"]
    for needle in ("Configuration", "Versions", real_results["versions"]["torch"], "train_size"):
        assert needle in about
    if real_results.get("provenance", {}).get("commit"):
        assert real_results["provenance"]["commit"][:12] in head
    # one small heatmap per recorded metric, CKA among them
    minis = [e["attrs"]["data-metric"] for e in dom.find("div", "mini-card")]
    assert minis[:3] == ["stitched_accuracy", "penalty", "cka"]


def test_the_hash_switches_metric_sort_and_details(real_results, tmp_path):
    expected = latest_cells(real_results)
    base = {k: e["attrs"]["style"] for k, e in shown_cells(render(real_results, tmp_path)).items()}

    dom = render(real_results, tmp_path, "metric=penalty")
    cells = shown_cells(dom)
    assert dom.body()["attrs"]["data-metric"] == "penalty"
    (select,) = dom.find("select", id="metric")
    (option,) = [
        o for o in dom.find("option") if "selected" in o["attrs"] and select in o["parents"]
    ]
    assert option["attrs"]["value"] == "penalty"
    for key, cell in expected.items():
        assert cells[key]["attrs"]["data-metric"] == "penalty"
        assert float(cells[key]["attrs"]["data-value"]) == pytest.approx(cell["penalty"])
    assert sum(base[k] != cells[k]["attrs"]["style"] for k in cells) >= len(cells) // 2

    cka = real_results["cka"]["main"]
    cells = shown_cells(render(real_results, tmp_path, "metric=cka"))
    for i, row in enumerate(cka):
        for j, value in enumerate(row):
            assert float(cells["main", i, j]["attrs"]["data-value"]) == pytest.approx(value)

    # sorted by the row / column means of the main matrix, high to low
    dom = render(real_results, tmp_path, "metric=stitched_accuracy&sort=desc")
    main = [e for e in dom.find("td", "cell") if e["attrs"]["data-variant"] == "main"]
    grid = np.array([float(e["attrs"]["data-value"]) for e in main]).reshape(3, 3)
    assert np.all(np.diff(grid.mean(axis=1)) <= 1e-12)
    assert np.all(np.diff(grid.mean(axis=0)) <= 1e-12)
    order = [int(e["attrs"]["data-i"]) for e in main[::3]]
    assert sorted(order) == [0, 1, 2]

    # a cell's details: family, init, how training ended, the curves as inline SVG
    dom = render(real_results, tmp_path, "cell=main/1/2")
    (aside,) = dom.find("aside", id="details")
    assert aside["attrs"]["data-cell"] == "main/1/2"
    cell = expected["main", 1, 2]
    for needle in (cell["family"], "receiver accuracy", "its group (s)"):
        assert needle in aside["text"]
    if "converged" in cell:  # the engine records how training ended
        assert cell["init"] in aside["text"]
        assert "not converged (fixed epochs)" in aside["text"]  # --epochs: a fixed-epoch run
        assert any(aside in c["parents"] for c in dom.find("figure", "curve"))


def test_screenshot_is_not_blank(real_results, tmp_path):
    page = write_report(real_results, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (1000, 1400)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, heatmap colours, small multiples: not a blank page
    dark = (pixels.sum(axis=2) < 200).mean()
    assert 0.001 < dark < 0.5  # some text and dark cells, not a black page


# ----------------------------------------------------------------------------- synthetic fields
def test_convergence_warnings_and_diagnostics_render(real_results, tmp_path):
    results = copy.deepcopy(real_results)
    results["provenance"] = {"commit": "abcdef1234567890", "created": "2025-05-01T12:00:00Z"}
    capped = {("main", 0, 0), ("random-sender", 2, 1)}
    rng = np.random.default_rng(0)
    for c in results["cells"]:
        key = (c["variant"], c["i"], c["j"])
        c.update(
            agreement=float(rng.uniform()), match_r2=float(rng.uniform(-0.5, 1)),
            rank_stitched=float(rng.uniform(3, 60)), rank_receiver=float(rng.uniform(3, 60)),
            ood_score=float(rng.uniform(0.8, 5)), init="lstsq", epochs=4,
            converged=key not in capped, stop="cap" if key in capped else "plateau",
            val_curve=[0.5, 0.7, 0.8, 0.81], train_curve=[1.9, 0.9, 0.5, 0.45],
        )  # fmt: skip
    results["cells"][1]["warning"] = "at chance and loss rose"
    dom = render(results, tmp_path, "metric=ood_score&cell=main/0/0")
    cells = shown_cells(dom)
    for key, cell in latest_cells(results).items():
        a = cells[key]["attrs"]
        assert float(a["data-value"]) == pytest.approx(cell["ood_score"])
        assert ("capped" in a["class"].split()) == (key in capped)
        assert ("cap" in cells[key]["text"].split()) == (key in capped)
    assert "warned" in cells["main", 0, 1]["attrs"]["class"]
    assert "at chance and loss rose" in cells["main", 0, 1]["attrs"]["title"]
    assert "2 cell(s) hit the epoch cap" in dom.find("header")[0]["text"]
    assert "abcdef123456" in dom.find("header")[0]["text"]
    options = [o["attrs"]["value"] for o in dom.find("option")]
    assert set(DIAGNOSTICS) <= set(options)
    (aside,) = dom.find("aside", id="details")
    for needle in ("hit the epoch cap (not converged)", "OOD score", "match R²", "rank, stitched"):
        assert needle in aside["text"]
    curves = [f for f in dom.find("figure", "curve") if aside in f["parents"]]
    assert [f["attrs"]["data-curve"] for f in curves] == [
        "validation accuracy per epoch",
        "mean training loss per epoch",
    ]
    for figure in curves:  # one point per epoch
        assert len([e for e in dom.find("circle") if figure in e["parents"]]) == 4


def test_an_old_matrix_without_the_new_fields_renders(real_results, tmp_path):
    results = copy.deepcopy(real_results)
    for key in ("provenance", "runtime"):
        results.pop(key, None)
    for c in results["cells"]:
        for key in NEW_CELL_FIELDS:
            c.pop(key, None)
    dom = render(results, tmp_path)
    assert not dom.find("ul", "notes")  # nothing to note (and no "null" in its place)
    assert "stitched accuracy" in dom.find("nav")[0]["text"]
    dom = render(results, tmp_path, "metric=agreement")  # asks for what is not there
    assert dom.body()["attrs"]["data-metric"] == "stitched_accuracy"
    assert "records no metric “agreement”" in dom.find("header")[0]["text"]
    options = [o["attrs"]["value"] for o in dom.find("option")]
    assert not set(DIAGNOSTICS) & set(options) and "penalty" in options
    assert len(shown_cells(dom)) == 18
    assert not [e for e in dom.find("td", "cell") if "capped" in e["attrs"]["class"]]


def test_nothing_in_the_results_can_escape_the_embedded_json(real_results, tmp_path):
    results = copy.deepcopy(real_results)
    evil = "</script><script>document.title='pwned'</script><!--"
    results["models"]["sender"]["spec"] = "timm:x" + evil
    results["cuts"]["receiver"][0]["name"] = "<b>layer1</b>"
    results["cells"][0]["reason"] = "\u2028 & </SCRIPT> \u2029"
    results["cells"][0]["stitched_loss"] = float("nan")
    page = render_report(results)
    assert page.lower().count("</script") == 4  # only the page's own scripts end
    dom = render(results, tmp_path)
    (title,) = dom.find("title")
    assert title["text"].startswith("stitching matrix: timm:x" + evil)  # text, not a script
    assert evil in dom.find("header")[0]["text"]  # shown as text
    assert not dom.find("b")  # no markup from the results
    assert "<b>layer1</b>" in dom.find("th", "col")[0]["text"]
    embedded = re.search(r'<script id="results" type="application/json">(.*?)</script>', page, re.S)
    back = json.loads(embedded.group(1))
    assert back["models"]["sender"]["spec"] == "timm:x" + evil
    assert back["cells"][0]["reason"] == "\u2028 & </SCRIPT> \u2029"
    assert back["cells"][0]["stitched_loss"] == "NaN"
    assert json.loads(_script_json({"a": "</script>"})) == {"a": "</script>"}


# ----------------------------------------------------------------------------- the command
def test_stitch_report_writes_the_page_and_prints_its_path(real_results, tmp_path):
    (tmp_path / "matrix.json").write_text(json.dumps(real_results))
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)  # nothing fetched from a network
    out = tmp_path / "sub" / "r.htm"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "matrix.json"), "--out", str(out)])
    assert result.exit_code == 0 and result.stdout.strip() == str(out) and out.is_file()
    help_text = CliRunner().invoke(cli, ["report", "--help"]).output
    assert "Examples:" in help_text and "stitch report results/" in help_text


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: None, [], "has no matrix.json"),
        (lambda d: (d / "matrix.json").write_text("{oops"), [], "is not valid JSON"),
        (lambda d: (d / "matrix.json").write_text('{"schema": "x/9"}'), [], "schema 'x/9'"),
        (lambda d: (d / "f").write_text(""), ["--out", "{d}/f/r.html"], "is not a directory"),
        (lambda d: None, ["--out", "{d}/report.png"], "unknown file type '.png'"),
    ],
)
def test_stitch_report_bad_input_is_one_line_exit_2(real_results, tmp_path, setup, args, message):
    if args:
        (tmp_path / "matrix.json").write_text(json.dumps(real_results))
    setup(tmp_path)
    args = [a.format(d=tmp_path) for a in args]
    result = CliRunner().invoke(cli, ["report", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not list(tmp_path.glob("*.htm*"))
