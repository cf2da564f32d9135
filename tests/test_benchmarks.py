"""Smoke test of the GPU benchmark's CPU mode: ``benchmarks/gpu.py --device cpu --smoke`` runs
the whole benchmark (engine throughput, floor, memory, CPU-vs-device matrix) on tiny models, and
prints every number it promises. Nothing about time is asserted: only that the benchmark runs and
that its numbers are there and sane."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "gpu.py"
PAIRS = ("r10t×r10t", "r10t×vitti")
PRECISIONS = ("fp32", "bf16")
NUM = r"([0-9]+(?:\.[0-9]+)?)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench")
    env = {**os.environ, "OUT": str(out), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--smoke"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, out


@pytest.mark.slow
def test_gpu_benchmark_smoke_prints_every_number(smoke):
    stdout, _ = smoke
    row = re.compile(
        rf"^(\S+)\s+(fp32|bf16)\s+(\d+)\s+{NUM}\s+{NUM}\s+{NUM}%\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s*$"
    )
    rows = {}
    for line in stdout.splitlines():
        m = row.match(line)
        if m:
            rows[(m.group(1), m.group(2))] = [float(v) for v in m.groups()[2:]]
    assert set(rows) == {(p, q) for p in PAIRS for q in PRECISIONS}, stdout
    for key, (cells, eng, floor, ratio, peak, floor_peak, cache, wall, acc) in rows.items():
        assert cells == 4, key
        assert eng > 0 and floor > 0 and peak > 0 and floor_peak > 0 and wall > 0 and cache >= 0, (
            key
        )
        assert math.isclose(ratio, 100 * eng / floor, rel_tol=0.02, abs_tol=0.1), key
        assert 0 <= acc <= 100, key
    for pair in PAIRS:  # the goal line, one per pair in bf16
        assert re.search(rf"goal engine ≥ 80 % of the floor in bf16, {pair}: {NUM} %", stdout)
    check = re.search(rf"cpu vs cpu, tiny matrix \((\d+) of (\d+) cells\): max \|Δ accuracy\| = "
                      rf"{NUM} pts, max \|Δ loss\| = {NUM}", stdout)  # fmt: skip
    assert check, stdout
    assert int(check.group(1)) == int(check.group(2)) > 0
    # the same code on the same device twice: the matrix must come out identical
    assert float(check.group(3)) == 0.0 and float(check.group(4)) == 0.0


@pytest.mark.slow
def test_gpu_benchmark_smoke_writes_json(smoke):
    _, out = smoke
    saved = json.loads((out / "gpu.json").read_text())
    assert {(r["pair"], r["precision"]) for r in saved["rows"]} == {
        (p, q) for p in PAIRS for q in PRECISIONS
    }
    for r in saved["rows"]:
        assert r["engine"]["groups"] and r["floor"]["groups"]
        assert not r["engine"]["not_ok"], r["engine"]["not_ok"]
    assert saved["check"]["cells"] > 0
