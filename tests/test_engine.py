"""The one engine path: a pair equals its matrix cell; convergence (plateau, cap, validation
slice, the fixed-epoch label); devices and precision on the CPU; the subpixel closed form;
the activation cache's cache-or-stream choice."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from stitchcore import MatrixConfig, StitchConfig, run_matrix, stitch
from stitchcore.cli.main import cli
from stitchcore.datasets import DataOptions, load_data
from stitchcore.engine import RunData
from stitchcore.errors import StitchError
from stitchcore.runtime import make_runtime, resolve_device

OUTCOME = ("stitched_accuracy", "init_accuracy", "train_loss", "epochs", "agreement", "match_r2")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", DataOptions(train_size=500))


def test_a_pair_and_its_matrix_cell_give_the_same_numbers(digits_pair, digits, tmp_path):
    a, b = digits_pair
    pair = stitch(a, "layer2", b, "layer3", train=digits, epochs=1, device="cpu").metrics
    cfg = MatrixConfig(
        sender=a.spec, receiver=b.spec, sender_cuts=["layer1", "layer2"],
        receiver_cuts=["layer3"], train_size=500, cka=False, stitch=StitchConfig(epochs=1),
    )  # fmt: skip
    res = run_matrix(cfg, tmp_path / "m", device="cpu")
    cell = next(c for c in res["cells"] if c["sender_cut"] == "layer2")
    for key in OUTCOME:
        assert cell[key] == pytest.approx(pair[key], rel=1e-4, abs=1e-6), key
    assert cell["family"] == "strided_conv" and cell["stop"] == "fixed"


def test_a_cell_least_squares_cannot_solve_converges_by_default(digits_pair, digits):
    a, b = digits_pair
    # upsample_conv's closed form is at chance for layer4 → layer1: it learns from scratch
    res = stitch(a, "layer4", b, "layer1", family="upsample_conv", train=digits, device="cpu")
    m = res.metrics
    assert m["init_accuracy"] < 0.3 and m["from_scratch"]
    assert m["stop"] == "plateau" and m["converged"] is True
    assert m["stitched_accuracy"] > 0.85
    assert len(m["val_curve"]) == m["epochs"] > 2
    # stopped on a plateau: the last `patience` epochs did not beat the best one
    assert max(m["val_curve"][-2:]) <= max(m["val_curve"][:-2])


def test_the_cap_is_marked_and_fixed_epochs_are_labelled_not_converged(digits_pair, digits):
    a, b = digits_pair
    capped = stitch(a, "layer4", b, "layer1", family="upsample_conv", train=digits,
                    max_epochs=2, device="cpu").metrics  # fmt: skip
    assert capped["stop"] == "cap" and capped["converged"] is False and capped["epochs"] == 2
    fixed = stitch(a, "layer2", b, "layer2", train=digits, epochs=1, device="cpu").metrics
    assert fixed["stop"] == "fixed" and fixed["converged"] is None and fixed["val_curve"] == []


def test_validation_slice_is_held_out_of_the_training_split_only(digits):
    data = RunData(digits)
    train, val = data.fit_val(StitchConfig())
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert len(train) + len(val) == len(digits.train_y)
    assert val.max() < len(digits.train_y)  # indices into the training split, not the test one
    assert len(val) == round(0.1 * len(digits.train_y))
    all_train, none = data.fit_val(StitchConfig(epochs=1))
    assert none is None and len(all_train) == len(digits.train_y)


def test_subpixel_closed_form_solves_what_upsample_conv_cannot(digits_pair):
    a, b = digits_pair
    full = load_data("digits")  # the fit needs more rows than a 512-channel patch has features
    sub = stitch(a, "layer4", b, "layer1", family="subpixel_conv", train=full, epochs=0,
                 device="cpu").metrics  # fmt: skip
    up = stitch(a, "layer4", b, "layer1", family="upsample_conv", train=full, epochs=0,
                device="cpu").metrics  # fmt: skip
    assert up["init_accuracy"] < 0.3
    assert sub["init_accuracy"] > 0.8
    assert sub["match_r2"] > up["match_r2"]


def test_bf16_autocast_on_cpu_is_close_to_fp32(digits_pair, digits):
    a, b = digits_pair
    kw = dict(train=digits, epochs=1, device="cpu")
    fp32 = stitch(a, "layer2", b, "layer2", **kw).metrics
    bf16 = stitch(a, "layer2", b, "layer2", precision="bf16", **kw).metrics
    assert bf16["stitched_accuracy"] == pytest.approx(fp32["stitched_accuracy"], abs=0.03)
    assert bf16["train_loss"] != fp32["train_loss"]  # it really ran in another precision


def test_unavailable_devices_and_precisions_are_one_line_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(StitchError, match="no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(StitchError, match="no CUDA GPU"):
            resolve_device("cuda:7")
    with pytest.raises(StitchError, match="unknown device"):
        resolve_device("tpu:0")
    with pytest.raises(StitchError, match="unknown precision"):
        make_runtime("cpu", "fp8")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda:7"], "CUDA"),
        (["--device", "nonsense"], "device"),
        (["--precision", "fp8"], "fp8"),
    ],
)
def test_device_errors_in_the_cli_are_one_line_exit_2(specs_args, args, message):
    if torch.cuda.is_available() and "cuda" in args[-1]:
        pytest.skip("this machine has GPUs")
    res = CliRunner().invoke(cli, [*specs_args, *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], res.output


@pytest.fixture
def specs_args(digits_pair, tmp_path):
    a, b = digits_pair
    return ["pair", "--sender", a.spec, "--sender-cut", "layer2", "--receiver", b.spec,
            "--receiver-cut", "layer2", "--train-size", "200", "--epochs", "1"]  # fmt: skip


def test_explicit_cpu_device_end_to_end_through_the_cli(digits_pair, tmp_path):
    a, b = digits_pair
    out = tmp_path / "m"
    res = CliRunner().invoke(cli, [
        "matrix", "--sender", a.spec, "--receiver", b.spec, "--sender-cuts", "layer2",
        "--receiver-cuts", "layer2", "--train-size", "300", "--epochs", "1", "--device", "cpu",
        "--out", str(out), "--cache", "stream",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    results = json.loads((out / "matrix.json").read_text())
    assert results["timings"]["runtime"]["device"] == "cpu"
    assert results["timings"]["cache"]["mode"] == "stream"
    assert "streamed" in res.output
    cell = results["cells"][0]
    assert cell["status"] == "ok" and cell["stitched_accuracy"] > 0.5


def test_streamed_and_cached_activations_give_the_same_cell(digits_pair, tmp_path):
    a, b = digits_pair
    cells = {}
    for mode in ("memory", "stream"):
        cfg = MatrixConfig(sender=a.spec, receiver=b.spec, sender_cuts=["layer1"],
                           receiver_cuts=["layer1"], train_size=300, cka=False,
                           stitch=StitchConfig(epochs=1))  # fmt: skip
        res = run_matrix(cfg, tmp_path / mode, device="cpu", cache_mode=mode)
        assert res["timings"]["cache"]["mode"] == mode
        cells[mode] = res["cells"][0]
    for key in OUTCOME:
        assert cells["memory"][key] == pytest.approx(cells["stream"][key], rel=1e-4), key


def test_cache_budget_chooses_memory_disk_or_stream(tmp_path):
    from stitchcore.feeds import ActivationCache

    rt = make_runtime("cpu")
    said = []
    plan = lambda **kw: ActivationCache(rt, **kw).plan(1000, 1000, said.append)  # noqa: E731
    assert plan(memory_budget=10**7) == "memory"
    assert plan(memory_budget=10**5, disk_budget=10**7, spill_dir=tmp_path) == "disk"
    assert plan(memory_budget=10**5, disk_budget=10**5, spill_dir=tmp_path) == "stream"
    assert len(said) == 3 and "streamed" in said[-1] and "disk" in said[1]


def test_between_disk_and_stream_the_measured_cheaper_one_is_chosen(tmp_path):
    from stitchcore.feeds import ActivationCache

    rt = make_runtime("cpu")
    said = []

    def plan(compute_s):
        cache = ActivationCache(rt, memory_budget=10**5, disk_budget=10**9, spill_dir=tmp_path)
        return cache.plan(10**6, 1000, said.append, stream_cost=lambda: compute_s)

    # a sender prefix of 1 s per sample: reading 0.5 MB back from disk is cheaper
    assert plan(1.0) == "disk"
    assert "cached on disk" in said[-1] and "computing them again 1000.00 ms" in said[-1]
    # a free sender prefix: computing again is cheaper than any read
    assert plan(0.0) == "stream"
    assert "streamed, the cheaper way" in said[-1] and "MiB/s" in said[-1]
    assert not list(tmp_path.glob("probe-*"))  # the probe file is gone


_REUSE_PROBE = """
import resource, torch
from stitchcore.runtime import make_runtime
from stitchcore.heap import steady_heap
make_runtime("cpu")
faults = []
for _ in range(4):  # a step's activations (20 of 64 MiB: 1.25 GiB) made, then freed together
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.empty(16 * 2**20).fill_(1.0) for _ in range(20)]
    del acts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(steady_heap(), min(faults[1:]))
"""


@pytest.mark.parametrize("env, heap", [({}, "steady"), ({"STITCHCORE_HEAP": "default"}, "default")])
def test_a_run_reuses_its_big_blocks_instead_of_faulting_in_fresh_pages(env, heap):
    """make_runtime fixes glibc's malloc (stitchcore.heap): a step's activations, 1.25 GiB in
    64 MiB blocks, freed and made again come back from the heap (a few faults) instead of fresh
    pages (327,680 of 4 KiB): neither mmap-ed one by one nor trimmed off the heap's top."""
    import os
    import subprocess
    import sys

    unset = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "STITCHCORE_HEAP")
    full = {k: v for k, v in os.environ.items() if k not in unset} | env
    out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=full, capture_output=True,
                         text=True, check=True).stdout.rsplit(maxsplit=1)  # fmt: skip
    state, faults = out[0], int(out[1])
    assert state.startswith(heap)
    if heap == "steady":
        assert faults < 1000, faults
    else:  # glibc's own moving threshold stops at 32 MiB: every 64 MiB block is a fresh mmap
        assert faults > 300_000, faults


def test_a_run_flushes_denormal_floats_to_zero():
    """make_runtime turns on flush-to-zero (a CPU's slow path for denormals made a 224 px
    ResNet-50 training step 1.6× slower); checked in a fresh process, where it starts off."""
    import subprocess
    import sys

    probe = (
        "import torch\n"
        "x = torch.tensor([1e-39])\n"
        "before = (x * 1.0).item()\n"
        "from stitchcore.runtime import make_runtime\n"
        "make_runtime('cpu')\n"
        "print(before, (x * 1.0).item())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert before > 0 and after == 0.0, (before, after)
