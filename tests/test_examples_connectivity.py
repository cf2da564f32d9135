"""examples/connectivity in miniature mode: the study runs end to end and records what it says."""

import json

from example_studies import load_study


def test_connectivity_mini_mode_writes_results_and_figure(tmp_path):
    argv = ["--mini", "--out", str(tmp_path), "--threads", "1", "--seed", "3"]
    result = load_study("connectivity").main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())
    # --seed is the stitches' seed, not the last base model's
    assert saved["seed"] == 3
    assert (
        json.loads((tmp_path / "matrix/config.json").read_text())["config"]["stitch"]["seed"] == 3
    )
    assert saved["layers"] == result["layers"]
    assert [r["layer"] for r in saved["layers"]] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    for row in saved["layers"]:
        for key in ("real_accuracy", "random_sender_accuracy", "cka"):
            assert 0.0 <= row[key] <= 1.0 + 1e-6
        # penalty = receiver's own accuracy − stitched accuracy, for both variants
        own = saved["baselines"]["main"]["receiver_accuracy"]
        assert abs(row["real_penalty"] - (own - row["real_accuracy"])) < 1e-9
        # mini mode: one fixed epoch per stitch, labelled so (the full mode converges)
        assert (row["real_epochs"], row["real_stop"]) == (1, "fixed")
        assert (row["random_sender_epochs"], row["random_sender_stop"]) == (1, "fixed")
    assert saved["params"]["train_size"] == 200 and saved["commit"]
    assert (tmp_path / "connectivity.png").read_bytes()[:4] == b"\x89PNG"
