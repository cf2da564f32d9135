"""Results integrity (issue 12): a results directory is never wrong, and finished work is never
lost. Foreign shards refused by `stitch merge`; damaged files reported and recomputed; concurrent
processes share the work; bad input writes nothing; activation spill files found and swept after
SIGKILL and equal to memory; the frozen check inside a matrix; absurd training flagged; cell files
never half-written. Every test runs the real engine on two small ResNets trained on digits."""

import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import stitchcore
import stitchcore.engine
from stitchcore.cli.main import cli
from stitchcore.fileio import read_json, write_json
from stitchcore.matrix import MatrixConfig
from stitchcore.results import CELL_FIELDS, ResultsDir
from stitchcore.stitching import FrozenModelError, StitchConfig

STITCH = [sys.executable, "-m", "stitchcore.cli"]

CUTS = "layer1,layer2"
FOUR = "layer1,layer2,layer3,layer4"


@pytest.fixture(scope="module")
def specs(digits_pair):
    a, b = digits_pair
    return a.spec, b.spec


def args(specs, out, *extra, s_cuts=CUTS, r_cuts=CUTS):
    """A 2 × 2 matrix (two groups: receiver cuts layer1 and layer2), about 5 s."""
    return [
        "matrix", "--sender", specs[0], "--receiver", specs[1], "--sender-cuts", s_cuts,
        "--receiver-cuts", r_cuts, "--train-size", "200", "--epochs", "1", "--no-cka",
        "--no-diagnostics", "--no-report", "--out", str(out), *extra,
    ]  # fmt: skip


def invoke(argv):
    return CliRunner().invoke(cli, argv, prog_name="stitch")


def ok(res):
    assert res.exit_code == 0, (res.stderr or res.output)[-3000:]
    assert "Traceback" not in res.stderr
    return res


def one_line_error(res) -> str:
    """The single stderr line of a refused command (exit code 2, no traceback)."""
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output[-2000:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def cells(out) -> dict:
    """The assembled cells by (variant, i, j), without timings."""
    matrix = json.loads((Path(out) / "matrix.json").read_text())
    return {
        (c["variant"], c["i"], c["j"]): {k: v for k, v in c.items() if not k.endswith("time_s")}
        for c in matrix["cells"]
    }


def matrix_json(out) -> dict:
    return json.loads((Path(out) / "matrix.json").read_text())


def env():
    """Subprocesses with this process's stitchcore (the checkout under test, whatever their
    working directory) and thread count (losses then agree to the last digit)."""
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    here = str(Path(stitchcore.__file__).resolve().parents[1])
    e["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [e.get("PYTHONPATH")])])
    return e


@pytest.fixture(scope="module")
def reference(specs, tmp_path_factory):
    """The 2 × 2 matrix computed once, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    ok(invoke(args(specs, out)))
    return out


# ------------------------------------------------------------------------ 1. merge
def test_merge_refuses_shards_of_another_configuration(specs, reference, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    ok(invoke(args(specs, here, "--shard", "1/2")))
    ok(invoke(args(specs, there, "--shard", "2/2", "--lr", "2e-3")))  # another configuration
    for f in there.glob("cells/main/*_1.json"):  # copied in, as from another machine
        shutil.copy(f, here / "cells" / "main" / f.name)
    line = one_line_error(invoke(["merge", str(here)]))
    assert "another configuration" in line and "merge only shards of one command" in line
    assert not (here / "matrix.json").exists()
    # the right shard replaces them (its cells are recomputed, not resumed) and merge accepts
    ok(invoke(args(specs, here, "--shard", "2/2")))
    ok(invoke(["merge", str(here)]))
    assert cells(here) == cells(reference)


# ------------------------------------------------------------------------ 2. damaged files
def _truncate(path: Path, keep: float = 0.5) -> None:
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])


def test_damaged_files_are_reported_and_recomputed(specs, reference, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    _truncate(out / "cells/main/0_0.json")  # group j=0: truncated ...
    (out / "cells/main/1_0.json").write_text("")  # ... and empty
    _truncate(out / "config.json")
    _truncate(out / "cells/main/baseline.json")
    _truncate(out / "matrix.json")
    res = ok(invoke(args(specs, out)))
    for name in ("0_0.json", "1_0.json", "config.json"):
        assert any(name in line and "is damaged" in line for line in res.stderr.splitlines()), name
    assert "JSONDecodeError" not in res.stderr
    final = matrix_json(out)
    assert final["timings"]["cells_computed"] == 2  # group j=0 only
    assert final["timings"]["cells_resumed"] == 2
    assert cells(out) == cells(reference)
    assert final["baselines"] == matrix_json(reference)["baselines"]
    assert (
        read_json(out / "config.json")["digest"] == read_json(reference / "config.json")["digest"]
    )


def test_a_damaged_baseline_alone_is_recomputed(specs, reference, tmp_path):
    out = tmp_path / "baseline"
    shutil.copytree(reference, out)
    _truncate(out / "cells/main/baseline.json", 0.3)
    res = ok(invoke(args(specs, out)))
    assert "baseline.json" in res.stderr and "is damaged" in res.stderr
    final = matrix_json(out)
    assert final["timings"]["cells_computed"] == 0
    assert final["baselines"] == matrix_json(reference)["baselines"]
    assert read_json(out / "cells/main/baseline.json") == final["baselines"]["main"]


def test_cells_missing_fields_or_of_another_configuration_are_recomputed(
    specs, reference, tmp_path
):
    out = tmp_path / "foreign"
    shutil.copytree(reference, out)
    cell = read_json(out / "cells/main/0_1.json")
    write_json(out / "cells/main/0_1.json", {**cell, "digest": "0" * 16})  # another config
    write_json(out / "cells/main/1_0.json", {k: v for k, v in cell.items() if k != "status"})
    ok(invoke(args(specs, out)))
    assert matrix_json(out)["timings"]["cells_computed"] == 4
    assert cells(out) == cells(reference)


# ------------------------------------------------------------------------ 3. concurrency
def _computing(stderr: str) -> int:
    """Groups a process computed, from its log ("VARIANT: stitching into receiver cut X")."""
    return sum(": stitching into receiver cut" in line for line in stderr.splitlines())


def _together(*argvs):
    procs = [
        subprocess.Popen(a, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in argvs
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "cannot write" not in err, err[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_on_one_directory_share_the_work(specs, tmp_path):
    # 4 groups of one cell; both processes started at once, each printing its own timings
    out = tmp_path / "shared"
    argv = STITCH + args(specs, out, "--json", s_cuts="layer2", r_cuts=FOUR)
    outs = _together(argv, argv)
    computed = [json.loads(stdout)["timings"]["cells_computed"] for stdout, _ in outs]
    assert sum(computed) == 4, computed  # every group computed exactly once
    assert [_computing(err) for _, err in outs] == computed
    final = matrix_json(out)
    assert len(final["cells"]) == 4 and all(c["status"] == "ok" for c in final["cells"])
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_a_shard_started_twice_is_computed_once(specs, tmp_path):
    out = tmp_path / "twice"
    argv = STITCH + args(specs, out, "--shard", "1/2", s_cuts="layer2", r_cuts=FOUR)
    outs = _together(argv, argv)
    assert sum(_computing(err) for _, err in outs) == 2  # share 1 of 2: groups 0 and 2
    found = sorted(str(p.relative_to(out / "cells")) for p in out.glob("cells/*/*_*.json"))
    assert found == ["main/0_0.json", "main/0_2.json"]
    assert not (out / "matrix.json").exists()


def _hammer(path: str, tag: int, n: int, errors) -> None:
    try:
        for k in range(n):
            write_json(path, {"writer": tag, "k": k, "pad": "x" * 20_000})
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    target = tmp_path / "cells" / "main" / "0_0.json"
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(target), t, 150, errors)) for t in range(3)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):  # a reader sees whole files only
        data = read_json(target)
        if data is not None:
            assert len(data["pad"]) == 20_000
            seen += 1
    for p in procs:
        p.join()
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    assert read_json(target)["k"] == 149
    assert not list(target.parent.glob(".*.tmp"))


# ------------------------------------------------------------------------ 4. bad input
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sender-cuts", "layer1,layer9"], "unknown cut 'layer9'"),
        (["--family", "lowrank", "--family-option", "rank=abc"], "refuses the options"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--epochs", None, "--train-size", "40"], "too few to hold out a validation slice"),
        (["--data", "fortunes"], "no tokenizer for text data"),
    ],
    ids=["unknown-cut", "family-option", "lr-nan", "too-few-to-validate", "text-data"],
)
def test_bad_input_writes_nothing_and_the_corrected_command_runs(
    specs, reference, tmp_path, extra, message
):
    out = tmp_path / "bad"
    argv = args(specs, out)
    for flag, value in zip(extra[::2], extra[1::2]):
        k = argv.index(flag) if flag in argv else None
        if value is None:  # drop the option
            del argv[k : k + 2]
        elif k is None:
            argv += [flag, value]
        else:
            argv[k + 1] = value
    assert message in one_line_error(invoke(argv))
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    ok(invoke(args(specs, out)))  # not refused as "a different configuration"
    assert cells(out) == cells(reference)


# ------------------------------------------------------------------------ 5. spill files
def _config(specs, **kw) -> MatrixConfig:
    return MatrixConfig(
        sender=specs[0], receiver=specs[1], sender_cuts=CUTS.split(","),
        receiver_cuts=CUTS.split(","), train_size=200, cka=False, diagnostics=False,
        stitch=StitchConfig(epochs=1), **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fp16_memory(specs, tmp_path_factory):
    """The 2 × 2 matrix with activations cached in memory in 16 bits (--fp16)."""
    out = tmp_path_factory.mktemp("fp16") / "run"
    ok(invoke(args(specs, out, "--fp16")))
    return out


def numbers(out) -> dict:
    """The cells without their configuration digest (16-bit caches differ in it: --fp16 is a
    setting, a spill to disk a consequence of the budget)."""
    return {k: {f: v for f, v in c.items() if f != "digest"} for k, c in cells(out).items()}


def close_to_fp32(got: dict, fp32: dict) -> None:
    for key, c in fp32.items():
        for metric in ("stitched_accuracy", "init_accuracy"):
            assert got[key][metric] == pytest.approx(c[metric], abs=0.02), (key, metric)
        assert got[key]["train_loss"] == pytest.approx(c["train_loss"], rel=0.05, abs=0.01)


def test_fp16_in_a_matrix_halves_the_cache_and_stays_close(reference, fp16_memory):
    fp16, fp32 = matrix_json(fp16_memory), matrix_json(reference)
    assert fp16["config"]["fp16"] is True and fp16["config_digest"] != fp32["config_digest"]
    assert fp16["timings"]["cache"] == {
        "mode": "memory",
        "bytes": fp32["timings"]["cache"]["bytes"] // 2,
    }
    assert numbers(fp16_memory) != numbers(reference)  # 16 bits did change the last digits
    close_to_fp32(numbers(fp16_memory), numbers(reference))


def test_disk_cache_spills_under_the_results_directory_and_equals_fp16_memory(
    specs, reference, fp16_memory, tmp_path
):
    out = tmp_path / "disk"
    during = []
    cfg = _config(specs)
    assert cfg.digest() == read_json(reference / "config.json")["digest"]  # the CLI's config
    stitchcore.run_matrix(
        cfg, out, cache_mode="disk",
        on_cell=lambda _c: during.append(sorted(out.glob(".spill/*/acts-*.bin"))),
    )  # fmt: skip
    assert during and all(during)
    assert {p.parent.name for p in during[0]} == {str(os.getpid())}  # .spill/PID
    assert not list(out.glob(".spill/*/*"))  # removed when the run ends
    assert matrix_json(out)["timings"]["cache"] == matrix_json(fp16_memory)["timings"]["cache"] | {
        "mode": "disk"
    }
    assert numbers(out) == numbers(fp16_memory)  # the same 16-bit values, from disk
    close_to_fp32(numbers(out), numbers(reference))


def test_a_tiny_cache_budget_spills_to_disk_or_streams_whichever_costs_less(
    specs, fp16_memory, reference, tmp_path
):
    out = tmp_path / "tiny"
    res = ok(invoke(args(specs, out, "--cache-gb", "1e-6")))
    line = next(x for x in res.stderr.splitlines() if x.startswith("activations:"))
    read_ms, compute_ms = (
        float(re.search(rf"{what} (\d+\.\d+) ms", line).group(1))
        for what in ("takes", "computing them again")
    )
    mode = matrix_json(out)["timings"]["cache"]["mode"]
    assert mode == ("stream" if compute_ms < read_ms else "disk"), line
    if mode == "disk":
        assert f"cached on disk in 16 bits under {out / '.spill'}/" in line
        assert numbers(out) == numbers(fp16_memory)  # the same 16-bit values, from disk
    else:
        assert "streamed, the cheaper way" in line
        close_to_fp32(numbers(out), numbers(reference))


@pytest.mark.slow
def test_spill_files_of_a_killed_run_are_removed_by_the_next(specs, fp16_memory, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(STITCH + args(specs, out, "--cache", "disk"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob(".spill/*/acts-*.bin")):
        assert proc.poll() is None, "the run ended before it spilled"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = out / ".spill" / str(proc.pid)
    assert list(left.glob("acts-*.bin"))  # SIGKILL leaves them behind ...
    ok(invoke(args(specs, out, "--cache", "disk")))
    assert not left.exists()  # ... and the next run removes them
    assert not list(out.glob(".spill/*/*"))
    assert numbers(out) == numbers(fp16_memory)


# ------------------------------------------------------------------------ 6. frozen models
@pytest.fixture
def bn_moves_once(monkeypatch):
    """The first group's training puts the receiver suffix's BatchNorms in train mode (as a buggy
    plugin could): their running statistics move."""
    real = stitchcore.engine.train_members
    calls = []

    def train_members(members, suffix, *a, **kw):
        calls.append(1)
        if len(calls) > 1:
            return real(members, suffix, *a, **kw)
        norms = [m for m in suffix.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        hooks = [m.register_forward_pre_hook(lambda mod, _x: mod.train() and None) for m in norms]
        assert norms
        try:
            return real(members, suffix, *a, **kw)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(stitchcore.engine, "train_members", train_members)
    return calls


def test_a_moved_frozen_model_fails_its_group_and_the_matrix_goes_on(
    specs, reference, tmp_path, bn_moves_once
):
    out = tmp_path / "frozen"
    res = ok(invoke(args(specs, out)))
    assert len(bn_moves_once) == 2
    got, ref = cells(out), cells(reference)
    for i in (0, 1):
        cell = got[("main", i, 0)]
        assert cell["status"] == "failed", cell
        assert (
            cell["reason"].startswith("frozen model changed") and "running_mean" in cell["reason"]
        )
        assert got[("main", i, 1)] == ref[("main", i, 1)]  # the next group: the true receiver
    assert "2 cells failed" in res.stderr


def test_stitch_raises_frozen_model_error(digits_pair, bn_moves_once):
    from stitchcore.datasets import DataOptions, load_data

    a, b = digits_pair
    splits = load_data("digits", DataOptions(train_size=200))
    with pytest.raises(FrozenModelError, match="running_mean"):
        stitchcore.stitch(a, "layer2", b, "layer2", train=splits, epochs=1)
    assert len(bn_moves_once) == 1


# ------------------------------------------------------------------------ 7. absurd training
def test_an_absurd_learning_rate_is_flagged_not_a_plain_ok(specs, tmp_path):
    out = tmp_path / "lr"
    res = ok(invoke(args(specs, out, "--lr", "1e3", "--epochs", "2")))
    got = cells(out).values()
    chance_loss = math.log(10)
    diverged = [c for c in got if c["status"] == "ok" and c["train_curve"][-1] > 10 * chance_loss]
    assert diverged  # the point of the test: such cells exist at this lr
    assert all(c.get("warning") and "not a measurement" in c["warning"] for c in diverged)
    assert f"{len([c for c in got if c.get('warning')])} cells carry a warning" in res.stderr
    flagged = json.loads((out / "matrix.json").read_text())["cells"]
    assert (out / "matrix.csv").read_text().count("not a measurement") == sum(
        1 for c in flagged if c.get("warning")
    )


# ------------------------------------------------------------------------ 8. atomic cells
def test_a_crash_between_write_and_rename_leaves_no_partial_cell(
    specs, reference, tmp_path, monkeypatch
):
    import stitchcore.fileio as fileio

    real = os.replace

    def crash(src, dst):
        if str(dst).endswith("_1.json"):  # the second group's first cell
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)

    out = tmp_path / "crash"
    monkeypatch.setattr(fileio.os, "replace", crash)
    res = invoke(args(specs, out))  # a full disk mid-run: one error line, no traceback
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [res.stderr.strip().splitlines()[-1]]
    assert "cannot write" in errors[0] and "_1.json: No space left on device" in errors[0]
    assert not list(out.glob("cells/main/*_1.json"))  # nothing of the group that crashed
    assert len(list(out.glob("cells/main/*_0.json"))) == 2  # the finished group is kept
    assert not list(out.rglob(".*.tmp"))
    monkeypatch.setattr(fileio.os, "replace", real)
    ok(invoke(args(specs, out)))
    timings = matrix_json(out)["timings"]
    assert (timings["cells_resumed"], timings["cells_computed"]) == (2, 2)
    assert cells(out) == cells(reference)


SLOW_WRITER = """
import os, pathlib, sys, time
from stitchcore.results import ResultsDir

real = pathlib.Path.write_text

def slow(self, text, *a, **kw):  # half the file, then a pause the test kills us in
    with open(self, "w") as f:
        f.write(text[: len(text) // 2]); f.flush(); os.fsync(f.fileno())
        print("HALF", flush=True); time.sleep(60); f.write(text[len(text) // 2 :])
    return len(text)

rd = ResultsDir(sys.argv[1])
cell = {"variant": "main", "i": 0, "j": 0, "status": "ok", "digest": "d" * 16,
        "pad": "x" * 100_000}
if sys.argv[2] == "again":
    rd.write_cell({**cell, "status": "old"})
pathlib.Path.write_text = slow
rd.write_cell(cell)
"""


@pytest.mark.parametrize("case", ["first", "again"])
def test_a_writer_killed_mid_write_never_leaves_a_partial_cell(tmp_path, case):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(SLOW_WRITER))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r"), case],
                            stdout=subprocess.PIPE, text=True, env=env())  # fmt: skip
    assert proc.stdout.readline().strip() == "HALF"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rd = ResultsDir(tmp_path / "r")
    target = rd.cell_path("main", 0, 0)
    assert list(target.parent.glob(".0_0.json.*.tmp"))  # the half-written file is a temporary
    if case == "first":
        assert not target.exists()
        assert rd.read_cell("main", 0, 0, "d" * 16) is None
    else:  # the previous version, whole
        assert rd.read_cell("main", 0, 0, "d" * 16)["status"] == "old"
    assert [c["status"] for c in rd.cells()] == ([] if case == "first" else ["old"])
    assert all(k in c for c in rd.cells() for k in CELL_FIELDS)
