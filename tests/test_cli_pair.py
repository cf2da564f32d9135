"""`stitch pair` on two small trained models: the table, JSON, --save and the errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from stitchcore.checkpoint import load_stitched
from stitchcore.cli.main import cli
from stitchcore.datasets import adapt, load_data


@pytest.fixture(scope="module")
def specs(digits_pair):
    return [m.spec for m in digits_pair]


def pair(specs, *extra, s_cut="layer2", r_cut="layer2"):
    args = ["pair", "--sender", specs[0], "--sender-cut", s_cut, "--receiver", specs[1],
            "--receiver-cut", r_cut, "--epochs", "1", "--train-size", "600", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def test_pair_prints_the_table(specs):
    res = pair(specs)
    assert res.exit_code == 0, res.output
    for row in ("stitched accuracy", "receiver accuracy", "sender accuracy", "stitching penalty",
                "conv1x1"):  # fmt: skip
        assert row in res.output


def test_pair_json_and_save_rebuilds_same_accuracy(specs, tmp_path):
    res = pair(specs, "--json", "--save", str(tmp_path / "st"), s_cut="layer1", r_cut="layer2")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["family"] == "strided_conv"
    assert report["data"] == "digits"
    m = report["metrics"]
    assert m["stitched_accuracy"] > 0.8
    assert m["penalty"] == pytest.approx(m["receiver_accuracy"] - m["stitched_accuracy"])
    model, record = load_stitched(tmp_path / "st")
    data = load_data("digits")
    with torch.no_grad():
        acc = (
            (model(adapt(data.test_x, model_input(record))).argmax(1) == data.test_y).float().mean()
        )
    assert acc.item() == pytest.approx(m["stitched_accuracy"], abs=1e-6)


def model_input(record):
    from stitchcore.sources import load_model

    return load_model(record["sender"]["model"]).input


def test_family_options_reach_the_family(specs, tmp_path):
    res = pair(specs, "--family-option", "batchnorm=false", "--save", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    weights = (tmp_path / "s" / "stitch.json").read_text()
    assert '"batchnorm": false' in weights
    res = pair(specs, "--family-option", "colour=red")
    assert res.exit_code == 2 and "has no option colour" in res.output


def test_refused_family_names_the_families_that_can(specs):
    res = pair(specs, "--family", "conv1x1", s_cut="layer1", r_cut="layer2")
    assert res.exit_code == 2
    assert "cannot stitch" in res.output and "families that can" in res.output
    assert "strided_conv" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--family", "conv11"], "unknown stitch family 'conv11'; closest: conv1x1"),
        (["--data", "digitz"], "unknown dataset 'digitz'; closest: digits"),
        (["--family-option", "rank"], "KEY=VALUE"),
    ],
)
def test_usage_errors_exit_2(specs, extra, message):
    res = pair(specs, *extra)
    assert res.exit_code == 2 and message in res.output


def test_unknown_cut_names_closest(specs):
    res = pair(specs, s_cut="layer22")
    assert res.exit_code == 2 and "unknown cut 'layer22'" in res.output
