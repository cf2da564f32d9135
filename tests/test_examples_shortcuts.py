"""The shortcuts study (Smith & Marcu 2024) in miniature mode: it runs end to end and writes
results.json and its figures with sane numbers and the engine's per-cell diagnostics. No claim of
the paper is asserted here: one epoch on 300 images cannot reproduce it; the full run in
docs/results/shortcuts.md does."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from example_studies import load_study

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study():
    return load_study("shortcuts")


@pytest.fixture(scope="module")
def mini(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcuts")
    zoo = tmp_path_factory.mktemp("shortcuts-zoo")
    returned = study.main(["--mini", "--out", str(out), "--zoo", str(zoo)])
    return study, out, zoo, returned


def test_mini_writes_results_and_figures(mini):
    _, out, zoo, returned = mini
    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(returned))  # main returns what it wrote
    for key in ("command", "commit", "runtime_s", "threads", "date", "figures"):
        assert key in written
    assert written["mini"] is True
    assert (
        written["command"]
        == f".venv/bin/python examples/shortcuts/run.py --mini --out {out} --zoo {zoo}"
    )
    names = {Path(f).name for f in written["figures"]}
    assert names == {"shortcuts-accuracy.png", "shortcuts-rank.png", "shortcuts-data.png",
                     "shortcuts-diagnostics.png"}  # fmt: skip
    for f in written["figures"]:
        assert Path(f).read_bytes()[:8] == PNG


def test_mini_series_have_one_row_per_stitch_point(mini):
    result = mini[-1]
    layers = [layer["layer"] for layer in result["layers"]]
    assert layers == ["Layer 1", "Layer 2", "Layer 3", "Layer 4", "Linear"]
    pairs = {(s["experiment"], s["sender"], s["receiver"]) for s in result["series"]}
    assert pairs == {
        ("into-digit", sender, "digit")
        for sender in ("correlated", "digit", "colour", "colour-only", "clustered-noise")
    } | {("digit-as-sender", "digit", r) for r in ("colour-only", "correlated", "colour")} | {
        ("colour-only-into-greyscale", "colour-only", "greyscale")
    }
    for s in result["series"]:
        assert [r["layer"] for r in s["rows"]] == layers
        assert 0 <= s["receiver_accuracy"] <= 1
        for r in s["rows"]:
            assert 0 <= r["stitched_accuracy"] <= 1
            assert r["family"] == "conv1x1"
            assert 1 <= r["rank_input"] <= r["rank_input_cap"]
            assert 1 <= r["rank_output"] <= r["rank_output_cap"]
            # one fixed epoch per stitch in mini mode, one seed, labelled not converged
            assert [x["seed"] for x in r["seeds"]] == [0]
            assert (r["epochs"], r["stop"], r["converged"]) == (1, "fixed", False)
            # the engine's diagnostics, against the receiver on its own input
            assert 0 <= r["agreement"] <= 1
            assert r["match_r2"] <= 1
            assert r["ood_score"] > 0
            assert 1 <= r["rank_stitched"] and 1 <= r["rank_receiver"]
    assert [r["layer"] for r in result["digit_baseline"]] == layers
    noise = next(s for s in result["series"] if s["sender"] == "clustered-noise")
    # the noise at each point has the receiver's activation shape there
    assert [r["sender_shape"] for r in noise["rows"]] == [
        r["receiver_shape"] for r in noise["rows"]
    ]
    for variant, info in result["base_models"].items():
        assert 0 <= info["own_test_accuracy"] <= 1
        assert 0 <= info["correlated_accuracy"] <= 1, variant
    for row in result["comparison"]:
        assert 0 <= row["ours"] <= 1
        assert row["paper"] is None or 0 <= row["paper"] <= 1


def test_a_rerun_reuses_finished_stitches(mini, tmp_path):
    """Every finished stitch is saved; a rerun of the same configuration (e.g. after a kill)
    trains none again but the one whose save was damaged, and gives the same series."""
    study, out, zoo, first = mini
    rerun_out = tmp_path / "rerun"
    shutil.copytree(out, rerun_out)
    saved = sorted((rerun_out / "stitches").glob("*.json"))
    assert len(saved) >= sum(len(s["rows"]) for s in first["series"])
    saved[0].write_text(saved[0].read_text()[:20])  # what a kill mid-write could leave
    again = study.main(["--mini", "--out", str(rerun_out), "--zoo", str(zoo)])

    def numbers(series):  # all but the timings
        text = json.dumps(series)
        return json.loads(re.sub(r'"seconds": [0-9.e+-]+', '"seconds": 0', text))

    assert numbers(again["series"]) == numbers(first["series"])
    assert again["timings"]["stitches_s"] < first["timings"]["stitches_s"] / 3


def test_paired_rows_hand_each_model_its_own_part(study):
    """A paired row holds the receiver's input, then the sender's activation: the pass-through
    sender reads back exactly the activation, the receiver model exactly its input."""
    gen = torch.Generator().manual_seed(0)
    inputs, acts = torch.rand(5, 3, 4, 4, generator=gen), torch.rand(5, 2, 3, 3, generator=gen)
    rows = study.paired(inputs, acts)
    assert rows.shape == (5, 3 * 16 + 2 * 9)
    assert torch.equal(study.GivenActivations(3 * 16, (2, 3, 3))(rows), acts)
    seen = []
    study.OnInput(lambda x: seen.append(x) or x.sum((1, 2, 3)), (3, 4, 4))(rows)
    assert torch.equal(seen[0], inputs)


def test_noise_is_paired_with_images_of_its_class(study):
    labels = torch.tensor([2, 0, 2, 2, 1])
    pool = torch.tensor([0, 1, 2, 2, 0])
    idx = study.class_matched(labels, pool)
    assert torch.equal(pool[idx], labels)
    assert idx.tolist() == [2, 0, 3, 2, 1]  # cycling through class 2's images in order
    with pytest.raises(ValueError):
        study.class_matched(torch.tensor([3]), pool)


def test_numerical_rank_counts_independent_directions(study):
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 40, generator=gen)
    samples = torch.randn(200, 3, generator=gen) @ basis + 5.0  # rank 3 around an offset
    assert study.numerical_rank(samples) == 3
    assert study.numerical_rank(samples.view(200, 4, 10)) == 3  # any per-sample shape
    wide = torch.randn(20, 500, generator=gen)  # more features than samples: rank n - 1
    assert study.numerical_rank(wide) == 19 == study.rank_cap(wide)
    assert study.numerical_rank(torch.ones(10, 4)) == 0


def test_bad_input_exits_2_with_one_line(study, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exc:
        study.main(["--mini", "--out", str(blocker / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        study.main(["--mini", "--threads", "0", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
