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
    # mini mode trains every cell one fixed epoch, labelled so; the full mode converges
    for variant in saved["accuracy"]:
        assert saved["convergence"][variant]["stops"] == {"fixed": 9}
        assert saved["cells"]["epochs"][variant] == [[1] * 3] * 3
    assert saved["family"] == "auto" and saved["params"]["stitch_epochs"] == 1
    families = saved["cells"]["family"]["main"]
    assert [families[k][k] for k in range(3)] == ["conv1x1"] * 3  # same map size
    assert (tmp_path / "cross-depth.png").read_bytes()[:4] == b"\x89PNG"


def test_cross_depth_one_family_stitches_only_the_cells_it_accepts(tmp_path):
    """--family upsample_conv --main-only: only the cells whose sender map is smaller (the
    sender deeper) are stitched; the others are refused, not computed, and left out of the
    region means."""
    load_study("cross-depth").main(["--mini", "--out", str(tmp_path), "--threads", "1",
                                    "--family", "upsample_conv", "--main-only"])  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["accuracy"]) == {"main"} and saved["family"] == "upsample_conv"
    grid, status = saved["accuracy"]["main"], saved["cells"]["status"]["main"]
    for i in range(3):
        for j in range(3):
            assert (status[i][j] == "ok") == (i > j), (i, j, status[i][j])
            assert (grid[i][j] is not None) == (i > j)
    t = saved["triangles"]["main"]
    assert t["diagonal"] is None and t["upper"] is None and 0 <= t["lower"] <= 1
