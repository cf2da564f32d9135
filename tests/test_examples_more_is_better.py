"""examples/more-is-better in miniature mode: it runs end to end and writes what it says."""

import json

import pytest
from example_studies import load_study

LAYERS = ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_more_is_better_mini_mode_writes_results_and_figure(tmp_path):
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    result = load_study("more-is-better").main(["--mini", "--out", str(out), "--zoo", str(zoo)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["study"] == "more-is-better" and saved["mode"] == "mini"
    assert saved["commit"] and saved["runtime_s"] > 0 and saved["threads"] >= 1
    assert saved["command"].endswith(f"--mini --out {out} --zoo {zoo}")
    # the receiver and the four senders, trained on the sizes the plan names, in the given zoo
    sizes = {s["key"]: (s["train_size"], s["epochs"]) for s in saved["senders"]}
    assert sizes == {"less-data": (100, 1), "reference": (200, 1), "reference-2": (200, 1),
                     "more-data": (300, 1), "longer": (200, 2)}  # fmt: skip
    assert saved["receiver"]["train_size"] == 200 and saved["receiver"]["seed"] == 0
    assert saved["references"] == ["reference", "reference-2"]
    seeds = {s["key"]: s["seed"] for s in saved["senders"]}
    assert seeds["reference"] == 1 and seeds["reference-2"] == 2
    assert all((zoo / f"{s['name']}.safetensors").is_file() for s in saved["senders"])
    for sender in saved["senders"]:
        assert [r["layer"] for r in sender["layers"]] == LAYERS  # one row per stage boundary
        assert 0.0 <= sender["test_accuracy"] <= 1.0
        for row in sender["layers"]:
            assert row["status"] == "ok" and row["family"] == "conv1x1"
            for key in ("init_accuracy", "stitched_accuracy", "receiver_accuracy"):
                assert 0.0 <= row[key] <= 1.0
            assert -1e-6 <= row["cka"] <= 1.0 + 1e-6
            assert row["receiver_accuracy"] == pytest.approx(
                saved["receiver"]["test_accuracy"], abs=1e-4
            )  # the zoo record rounds
            assert row["penalty"] == pytest.approx(
                row["receiver_accuracy"] - row["stitched_accuracy"]
            )
    ref = next(s for s in saved["senders"] if s["key"] == "reference")
    assert all(r["penalty_vs_reference"] == 0 for r in ref["layers"])
    assert saved["figures"] == ["more-is-better-penalty.png"]
    assert (out / "more-is-better-penalty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_more_is_better_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load_study("more-is-better").main(["--threads", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "results.json").exists()
