"""examples/cross-depth in miniature mode: a 3 × 3 ResNet-18 × ResNet-34 grid with all controls."""

import json

from example_studies import load_study


def test_cross_depth_mini_mode_writes_four_grids_and_the_heatmap(tmp_path):
    load_study("cross-depth").main(["--mini", "--out", str(tmp_path), "--threads", "1"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sender_cuts"] == saved["receiver_cuts"] == ["act1", "layer2", "layer4"]
    assert set(saved["accuracy"]) == {"main", "random-sender", "random-receiver", "random-both"}
    for grid in saved["accuracy"].values():
        assert len(grid) == 3 and all(len(row) == 3 for row in grid)
        assert all(0.0 <= a <= 1.0 for row in grid for a in row)
    main = saved["accuracy"]["main"]
    lower = [main[i][j] for i in range(3) for j in range(3) if i > j]
    assert abs(saved["triangles"]["main"]["lower"] - sum(lower) / 3) < 1e-9
    assert (tmp_path / "cross-depth.png").read_bytes()[:4] == b"\x89PNG"
