"""`stitch matrix` end to end on small trained models and digits: outputs, controls, CKA,
resumption after SIGKILL, torchrun, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import stitchcore
from stitchcore.cli.main import cli
from stitchcore.families import StitchFamily

STITCH = [sys.executable, "-m", "stitchcore.cli"]


@pytest.fixture(scope="module")
def specs(digits_pair):
    a, b = digits_pair
    return a.spec, b.spec


def base_args(specs, out, *extra):
    return [
        "matrix", "--sender", specs[0], "--receiver", specs[1],
        "--sender-cuts", "layer1,layer2", "--receiver-cuts", "layer1,layer2,layer3",
        "--train-size", "400", "--epochs", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def strip_times(results: dict) -> list[dict]:
    keep = lambda c: {k: v for k, v in c.items() if not k.endswith("time_s")}  # noqa: E731
    return [keep(c) for c in results["cells"]]


@pytest.fixture(scope="module")
def tiny_matrix(specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "run"
    res = CliRunner().invoke(cli, base_args(specs, out, "--controls", "random-sender"))
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "matrix.json").read_text()), res


def test_matrix_writes_json_csv_png(tiny_matrix):
    out, results, _ = tiny_matrix
    assert results["schema"] == "stitchcore.matrix/1"
    for key in ("config", "models", "cuts", "data", "variants", "baselines", "cells", "cka",
                "versions", "timings"):  # fmt: skip
        assert key in results
    assert [c["name"] for c in results["cuts"]["sender"]] == ["layer1", "layer2"]
    assert len(results["cuts"]["receiver"]) == 3
    assert results["variants"] == ["main", "random-sender"]
    assert len(results["cells"]) == 2 * 3 * 2
    assert results["data"]["train_size"] == 400
    assert results["versions"]["torch"] == torch.__version__.split("+")[0]
    rows = (out / "matrix.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 12
    png = (out / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cells_are_stitched_and_controls_are_worse(tiny_matrix):
    _, results, _ = tiny_matrix
    main = {(c["i"], c["j"]): c for c in results["cells"] if c["variant"] == "main"}
    ctrl = {(c["i"], c["j"]): c for c in results["cells"] if c["variant"] == "random-sender"}
    assert all(c["status"] == "ok" for c in main.values())
    assert main[(1, 1)]["family"] == "conv1x1"  # same cut, same shape
    assert main[(0, 1)]["family"] == "strided_conv"  # layer1 is twice layer2's size
    assert main[(1, 0)]["family"] == "subpixel_conv"  # auto's choice for a smaller map
    assert main[(1, 1)]["stitched_accuracy"] > 0.7
    assert main[(1, 1)]["penalty"] == pytest.approx(
        main[(1, 1)]["receiver_accuracy"] - main[(1, 1)]["stitched_accuracy"]
    )
    mean = lambda cells: sum(c["stitched_accuracy"] for c in cells.values()) / len(cells)  # noqa: E731
    # digits is easy: early layers of a random network still carry it (Bansal et al. see the
    # same); the control must still be worse on average and its sender near chance on its own
    assert mean(ctrl) < mean(main)
    base = results["baselines"]
    assert base["main"]["sender_accuracy"] > 0.8 and base["random-sender"]["sender_accuracy"] < 0.4


def _test_activations(spec: str, cut: str) -> torch.Tensor:
    """A model's activation at a cut on the digits test split, computed here without the engine:
    the public split() of the loaded model on the images adapted to its input."""
    from stitchcore.datasets import DataOptions, adapt, load_data

    loaded = stitchcore.load_model(spec)
    splits = load_data("digits", DataOptions(train_size=400))
    prefix, _ = stitchcore.split(loaded, cut)
    with torch.no_grad():
        return prefix(adapt(splits.test_x, loaded.input)).flatten(1)


def test_cka_is_computed_per_cell(specs, tiny_matrix):
    from stitchcore.similarity import linear_cka

    _, results, _ = tiny_matrix
    grid = results["cka"]["main"]
    assert len(grid) == 2 and len(grid[0]) == 3
    senders = [c["name"] for c in results["cuts"]["sender"]]
    receivers = [c["name"] for c in results["cuts"]["receiver"]]
    acts_s = {cut: _test_activations(specs[0], cut) for cut in senders}
    acts_r = {cut: _test_activations(specs[1], cut) for cut in receivers}
    assert len(acts_s["layer1"]) == results["data"]["test_size"]
    for i, s_cut in enumerate(senders):
        for j, r_cut in enumerate(receivers):
            expected = float(linear_cka(acts_s[s_cut], acts_r[r_cut]))  # full-batch, debiased
            # the engine's estimate averages the unbiased terms over batches of 256
            assert grid[i][j] == pytest.approx(expected, abs=0.03), (s_cut, r_cut)
            cell = next(c for c in results["cells"] if c["variant"] == "main"
                        and (c["i"], c["j"]) == (i, j))  # fmt: skip
            assert cell["cka"] == grid[i][j]
    assert len({round(v, 3) for row in grid for v in row}) == 6  # not one value everywhere


def test_objective_match_in_a_matrix_of_a_model_with_itself(specs, tmp_path):
    # the same model on both sides: the diagonal stitches an activation to itself, so CKA is 1,
    # least squares finds the identity (matching MSE near 0) and the stitched model is the model
    out = tmp_path / "self"
    argv = base_args((specs[0], specs[0]), out, "--diagonal", "--objective", "match",
                     "--receiver-cuts", "layer1,layer2", "--no-report")  # fmt: skip
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "matrix.json").read_text())
    assert results["config"]["stitch"]["objective"] == "match"
    cells = results["cells"]
    assert [(c["i"], c["j"]) for c in cells] == [(0, 0), (1, 1)]
    own = results["baselines"]["main"]["receiver_accuracy"]
    for c in cells:
        assert c["status"] == "ok" and c["stitched_loss"] is None
        assert c["cka"] == pytest.approx(1.0, abs=1e-3)
        assert 0 <= c["match_mse"] < 1e-3
        assert c["stitched_accuracy"] == pytest.approx(own, abs=0.005)
    assert results["cka"]["main"][0][1] is None  # off the diagonal: not computed


def test_rerun_skips_finished_cells(specs, tiny_matrix):
    out, results, _ = tiny_matrix
    res = CliRunner().invoke(cli, base_args(specs, out, "--controls", "random-sender"))
    assert res.exit_code == 0
    again = json.loads((out / "matrix.json").read_text())
    assert again["timings"]["cells_computed"] == 0
    assert strip_times(again) == strip_times(results)


def test_different_configuration_is_refused_unless_forced(specs, tiny_matrix, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_matrix[0], out)
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    other = base_args(specs, out, "--epochs", "2", "--sender-cuts", "layer2", "--receiver-cuts",
                      "layer2", "--no-report")  # fmt: skip
    res = CliRunner().invoke(cli, other)
    assert res.exit_code == 2 and "different configuration" in res.stderr
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before  # untouched
    res = CliRunner().invoke(cli, [*other, "--force"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "matrix.json").read_text())
    assert results["config_digest"] != json.loads(before[out / "config.json"])["digest"]
    assert results["config"]["stitch"]["epochs"] == 2 and results["variants"] == ["main"]
    assert [(c["sender_cut"], c["receiver_cut"], c["epochs"]) for c in results["cells"]] == [
        ("layer2", "layer2", 2)
    ]
    # the old cells (12, with the control's) are gone, not merely left out
    assert sorted(p.name for p in out.glob("cells/*/*.json")) == ["0_0.json", "baseline.json"]
    assert results["timings"]["cells_computed"] == 1


def test_unwritable_output_fails_before_training(specs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli, base_args(specs, blocker / "out"))
    assert res.exit_code == 2 and "cannot write to output directory" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sender", "timm:resnet10t@random", "--sender-cuts", "layer9"], "unknown cut 'layer9'"),
        (["--family", "conv1x2"], "unknown stitch family"),
        (["--controls", "random-senders"], "unknown control"),
        (["--sender", "timm:resnet1000"], "unknown timm model"),
    ],
)
def test_bad_input_is_one_line_exit_2(specs, tmp_path, args, message):
    argv = base_args(specs, tmp_path / "o")
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.stderr
    assert res.stdout == "" and not (tmp_path / "o").exists()


class NaNStitch(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.c = c

    def forward(self, x):
        return x * self.w * float("nan")


class NaNFamily(StitchFamily):
    name = "nan_for_tests"
    description = "diverges at once (tests)"

    def accepts(self, s, r):
        return None if s.shape == r.shape else "only equal shapes"

    def build(self, s, r, **opts):
        return NaNStitch(s.channels)

    def init(self, stitch, a, b):
        pass


def test_unsolved_cells_learn_from_scratch_for_unsolved_epochs(specs, tmp_path):
    # upsample_conv's closed form for layer4 → layer1 is at chance (its maps are constant over
    # blocks): with --unsolved-epochs that cell restarts from the random init and trains exactly
    # as --init random does. auto picks subpixel_conv for the pair, whose closed form solves it:
    # then, like the conv1x1 cell, it keeps its closed form and its single epoch.
    def cells(name, *extra):
        argv = base_args(specs, tmp_path / name, "--sender-cuts", "layer4", "--no-cka",
                         "--no-report", *extra)  # fmt: skip
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 0, res.output
        matrix = json.loads((tmp_path / name / "matrix.json").read_text())
        return {c["receiver_cut"]: c for c in matrix["cells"]}

    auto = cells("auto", "--receiver-cuts", "layer1,layer4", "--unsolved-epochs", "2")
    upsample = ["--receiver-cuts", "layer1", "--family", "upsample_conv"]
    up = cells("up", *upsample, "--unsolved-epochs", "2")["layer1"]
    ref = cells("random", *upsample, "--init", "random", "--epochs", "2")["layer1"]
    sub, same = auto["layer1"], auto["layer4"]
    assert (sub["family"], same["family"], up["family"]) == (
        "subpixel_conv", "conv1x1", "upsample_conv"
    )  # fmt: skip
    assert up["init_accuracy"] < 0.3 and sub["init_accuracy"] > 0.8 and same["init_accuracy"] > 0.8
    assert (up["fine_tuned"], up["from_scratch"], up["epochs"]) == (False, True, 2)
    for solved in (sub, same):
        assert (solved["fine_tuned"], solved["from_scratch"], solved["epochs"]) == (True, False, 1)
    assert ref["epochs"] == 2 and not ref["from_scratch"]
    assert up["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
    assert up["stitched_accuracy"] == pytest.approx(ref["stitched_accuracy"], abs=0.01)


def test_unstitchable_and_diverging_cells_are_recorded_and_the_matrix_goes_on(
    specs, tmp_path, register_plugin
):
    class Plugin:
        @stitchcore.hookimpl
        def register_stitch_families(self, register):
            register(NaNFamily())

    register_plugin(Plugin(), "nan-family-test")
    out = tmp_path / "nan"
    res = CliRunner().invoke(cli, base_args(specs, out, "--family", "nan_for_tests", "--no-cka"))
    assert res.exit_code == 0, res.output
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    status = {(c["i"], c["j"]): c for c in cells}
    assert status[(0, 0)]["status"] == "failed" and "diverged" in status[(0, 0)]["reason"]
    assert status[(0, 1)]["status"] == "refused" and "only equal shapes" in status[(0, 1)]["reason"]
    assert "failed" in res.output and "could not be stitched" in res.output


def _env():
    """Subprocesses use the test process's thread count: float reductions (and so the last
    digits of losses) depend on it, and these tests compare results exactly."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


@pytest.mark.slow
def test_sigkill_loses_no_finished_cell_and_resume_equals_uninterrupted(
    specs, tmp_path, tiny_matrix
):
    _, reference, _ = tiny_matrix
    out = tmp_path / "killed"
    argv = STITCH + base_args(specs, out, "--controls", "random-sender")
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("cells/*/*_*.json"))) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.read_text() for p in out.glob("cells/*/*_*.json")}
    assert 3 <= len(finished) < 12
    assert all(json.loads(t)["status"] for t in finished.values())  # complete, parseable files
    subprocess.run(argv, env=_env(), check=True, capture_output=True)
    resumed = json.loads((out / "matrix.json").read_text())
    assert resumed["timings"]["cells_resumed"] == len(finished)
    assert all(p.read_text() == t for p, t in finished.items())  # kept as they were
    assert strip_times(resumed) == strip_times(reference)


@pytest.mark.slow
def test_torchrun_two_processes_equals_single_process(specs, tmp_path, tiny_matrix):
    _, reference, _ = tiny_matrix
    out = tmp_path / "dist"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29517", "-m", "stitchcore.cli",
            *base_args(specs, out, "--controls", "random-sender")]  # fmt: skip
    run = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    merged = json.loads((out / "matrix.json").read_text())
    assert strip_times(merged) == strip_times(reference)
    # rank 0 assembles; the count is both ranks' (3 of the 6 groups each, 2 cells per group)
    assert merged["timings"]["ranks"] == 2
    assert merged["timings"]["cells_computed"] == 12
    assert merged["timings"]["cells_resumed"] == 0


def _cell_files(out: Path) -> dict:
    return {
        str(p.relative_to(out / "cells")): (p.stat().st_mtime_ns, p.read_bytes())
        for p in out.glob("cells/*/*_*.json")
    }


def test_shards_then_merge(specs, tmp_path, tiny_matrix):
    _, reference, _ = tiny_matrix
    out = tmp_path / "sharded"
    runner = CliRunner()
    # groups in order: (main, 0..2), (random-sender, 0..2); share k of 2 takes every other one
    shares = {"1/2": [("main", 0), ("main", 2), ("random-sender", 1)],
              "2/2": [("main", 1), ("random-sender", 0), ("random-sender", 2)]}  # fmt: skip
    files = {}
    for k, groups in shares.items():
        res = runner.invoke(cli, base_args(specs, out, "--controls", "random-sender", "--shard", k))
        assert res.exit_code == 0, res.output
        assert "resuming" not in res.stderr
        now = _cell_files(out)
        new = sorted(set(now) - set(files))
        # this shard computed exactly its share (both sender cuts of each of its groups) ...
        assert new == sorted(f"{v}/{i}_{j}.json" for v, j in groups for i in (0, 1)), k
        # ... and left the other shard's cells as they were
        assert all(now[f] == files[f] for f in files)
        files = now
    # a shard alone does not assemble the matrix
    assert not (out / "matrix.json").exists()
    res = runner.invoke(cli, ["merge", str(out)])
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "matrix.json").read_text())
    assert strip_times(merged) == strip_times(reference)


def test_stitch_plot_redraws(tiny_matrix, tmp_path):
    out, _, _ = tiny_matrix
    target = tmp_path / "p.png"
    res = CliRunner().invoke(cli, ["plot", str(out), "--out", str(target)])
    assert res.exit_code == 0, res.output
    assert Path(target).read_bytes()[:4] == b"\x89PNG"


def test_readme_main_job_in_miniature_trains_bare_timm_models_first(tmp_path, monkeypatch):
    # `stitch matrix --sender timm:resnet18 --receiver timm:resnet34` with no pretrained weights
    # here: both base models are trained on digits first (in a zoo of this test's own, so they
    # are trained now), then the matrix is computed; a second run reuses them and the cells
    monkeypatch.setenv("STITCHCORE_ZOO", str(tmp_path / "zoo"))
    out = tmp_path / "main-job"
    argv = ["matrix", "--sender", "timm:resnet10t", "--receiver", "timm:resnet10t",
            "--train-size", "300", "--base-epochs", "1", "--epochs", "1",
            "--sender-cuts", "act1,layer2", "--receiver-cuts", "act1,layer2", "--no-report",
            "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 0, res.output
    training = [line for line in res.stderr.splitlines() if "training it on digits" in line]
    assert len(training) == 2 and "seed 0" in training[0] and "seed 1" in training[1]
    results = json.loads((out / "matrix.json").read_text())
    assert [c["name"] for c in results["cuts"]["sender"]] == ["act1", "layer2"]
    assert len(results["cells"]) == 4 and all(c["status"] == "ok" for c in results["cells"])
    for role in ("sender", "receiver"):
        model = results["models"][role]
        assert model["spec"] == "timm:resnet10t" and model["loaded_as"].startswith("zoo:")
        assert model["trained"]["data"]["train_samples"] == 300
    assert len(list((tmp_path / "zoo").glob("*.safetensors"))) == 2  # cached there
    assert "act1" in res.stdout and "layer2" in res.stdout  # the matrix, printed
    again = CliRunner().invoke(cli, argv)
    assert again.exit_code == 0, again.output
    assert again.stderr.count("zoo: reusing zoo:timm-resnet10t-digits-") == 2
    assert "zoo: no trained" not in again.stderr
    assert json.loads((out / "matrix.json").read_text())["timings"]["cells_computed"] == 0
