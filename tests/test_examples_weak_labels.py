"""examples/weak-labels in miniature mode: it runs end to end and writes what it says."""

import json

import pytest
from example_studies import load_study

LAYERS = ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_weak_labels_mini_mode_writes_results_and_figure(tmp_path):
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    result = load_study("weak-labels").main(["--mini", "--out", str(out), "--zoo", str(zoo)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["study"] == "weak-labels" and saved["mode"] == "mini" and saved["commit"]
    labels = {s["key"]: (s["label_noise"], s["coarse"]) for s in saved["senders"]}
    assert labels == {"reference": (0.0, False), "reference-2": (0.0, False),
                      "noise-0.1": (0.1, False), "noise-0.5": (0.5, False),
                      "noise-1.0": (1.0, False), "coarse": (0.0, True)}  # fmt: skip
    # the zoo records what each sender was trained on: the label options really reached training
    for sender in saved["senders"]:
        record = json.loads((zoo / f"{sender['name']}.json").read_text())
        assert record["data"]["label_noise"] == sender["label_noise"]
        assert record["data"]["coarse"] == sender["coarse"]
        assert record["num_classes"] == (2 if sender["coarse"] else 10)  # digits: even / odd
        # a coarse sender's head does not fit the 10-class receiver task: no baseline there
        if sender["coarse"]:
            assert sender["accuracy_on_receiver_task"] is None
        else:
            assert 0.0 <= sender["accuracy_on_receiver_task"] <= 1.0
        assert [r["layer"] for r in sender["layers"]] == LAYERS
        for row in sender["layers"]:
            assert row["status"] == "ok"
            assert 0.0 <= row["stitched_accuracy"] <= 1.0 and 0.0 <= row["init_accuracy"] <= 1.0
            assert -1e-6 <= row["cka"] <= 1.0 + 1e-6
            assert row["penalty"] == pytest.approx(
                row["receiver_accuracy"] - row["stitched_accuracy"]
            )
    assert (out / "weak-labels-penalty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weak_labels_unwritable_out_is_one_line_and_exit_code_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exc:
        load_study("weak-labels").main(["--mini", "--out", str(blocker / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
