"""``stitch cuts`` and ``stitch split`` on the command line: output, JSON, and every error path
(one line naming the closest valid names, exit code 2, a traceback only with ``--debug``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stitchcore.cli import commands, split_cmd  # noqa: F401  (register the commands)
from stitchcore.cli.main import cli
from stitchcore.errors import StitchError

STITCH = Path(sys.executable).with_name("stitch")
MODEL = "timm:resnet10t"  # small and quick to trace at its own input size


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "160"}, prog_name="stitch")


@pytest.fixture(scope="module")
def cuts_json() -> dict:
    result = run("cuts", MODEL, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cuts_table_lists_stem_and_stages():
    result = run("cuts", MODEL)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "cuts of timm:resnet10t" in lines[0]
    rows = [line for line in lines if line.startswith("│")]
    assert [r.split("│")[2].strip() for r in rows] == [
        "act1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert "layer1.0.act2" in rows[1] and "64×44×44" in rows[1] and "nchw" in rows[1]


def test_cuts_json_has_names_nodes_and_specs(cuts_json):
    assert cuts_json["model"] == MODEL
    first, last = cuts_json["cuts"][0], cuts_json["cuts"][-1]
    assert first == {
        "name": "act1",
        "node": "act1",
        "index": first["index"],
        "shape": [64, 88, 88],
        "layout": "nchw",
        "dtype": "float32",
        "prefix_tokens": 0,
    }
    assert (last["name"], last["node"], last["shape"]) == ("layer4", "layer4.0.act2", [512, 6, 6])
    indices = [c["index"] for c in cuts_json["cuts"]]
    assert indices == sorted(indices)


def test_cuts_all_lists_every_valid_node(cuts_json):
    result = run("cuts", MODEL, "--all", "--json")
    assert result.exit_code == 0, result.output
    every = [c["name"] for c in json.loads(result.stdout)["cuts"]]
    assert {"layer1.0.add", "layer1.0.act2", "global_pool.flatten"} <= set(every)
    assert {c["node"] for c in cuts_json["cuts"]} <= set(every)
    assert not any(name.startswith("layer1.0.conv") for name in every)  # inside the block


def test_split_shows_node_spec_and_check():
    result = run("split", MODEL, "layer2")
    assert result.exit_code == 0, result.output
    assert "cut layer2 (node layer2.0.act2): 128×22×22 nchw, float32" in result.stdout
    assert "suffix(prefix(x)) == model(x): yes (batch 2), yes (batch 3)" in result.stdout
    data = json.loads(run("split", MODEL, "layer1.0.add", "--json").stdout)
    assert data["node"] == "layer1.0.add" and data["recomposes_other_batch"] is True
    assert data["prefix_parameters"] > 0 and data["suffix_parameters"] > data["prefix_parameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cuts", "nope:resnet18"), "unknown model source 'nope'; known: "),
        (("cuts", "resnet18"), "has no source; write SOURCE:NAME[@WEIGHTS]"),
        (("cuts", "timm:resnet181"), "unknown timm model 'resnet181'; closest: resnet18"),
        (("split", MODEL, "layr2"), "unknown cut 'layr2'; closest: layer2"),
        (("split", MODEL, "layer1.0.bn2"), "these values cross it: maxpool (used by layer1.0.add)"),
    ],
    ids=["source", "no-source", "model", "cut", "refused-cut"],
)
def test_errors_are_one_line_with_exit_code_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_debug_lets_the_exception_through():
    result = run("--debug", "cuts", "timm:resnet181")
    assert isinstance(result.exception, StitchError)
    assert result.exit_code != 2


def test_real_subprocess_prints_one_line_and_exits_2():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(STITCH), "cuts", "timm:resnt18"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert "unknown timm model 'resnt18'; closest: resnet18" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cuts",), "Missing argument 'MODEL'. See 'stitch cuts --help'."),
        (("split", MODEL), "Missing argument 'CUT'. See 'stitch split --help'."),
        (("nope",), "No such command 'nope'. See 'stitch --help'."),
        (("--bogus", "cuts"), "No such option '--bogus'. See 'stitch --help'."),
        (("cuts", MODEL, "--nope"), "No such option '--nope'. See 'stitch cuts --help'."),
        (("cuts", MODEL, "extra"), "Got unexpected extra argument (extra). See 'stitch cuts"),
        (("train", MODEL, "--epochs", "x"), "Invalid value for '--epochs': 'x' is not a valid"),
    ],
    ids=["argument", "second-argument", "command", "group-option", "option", "extra", "value"],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("Error: ") and message in lines[0]


def test_usage_error_in_a_real_subprocess_is_one_line():
    proc = subprocess.run(
        [str(STITCH), "split", MODEL], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["Error: Missing argument 'CUT'. See 'stitch split --help'."]


class _Payload:
    """Not on torch's allow-list: unpickling it would mean running code."""


def test_hf_directory_whose_weights_need_code_is_one_line(tmp_path):
    """A save_pretrained directory whose pytorch_model.bin pickles a class: transformers'
    from_pretrained refuses it (weights_only), and the CLI says so in one line naming it."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    torch.save({**model.state_dict(), "extra": _Payload()}, tmp_path / "pytorch_model.bin")
    result = run("cuts", f"hf:{tmp_path}@pretrained")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "refusing to unpickle it: the checkpoint needs arbitrary code to load" in lines[0]
    assert "_Payload" in lines[0]
