"""The engine on one GPU: stitched-training throughput against the floor, memory, CPU agreement.

For a ResNet-50 × ResNet-50 and a ResNet-50 × ViT-B/16 stage matrix (timm ``@random`` weights
with a 10-class head: nothing is downloaded) at 224 px, on a synthetic 10-class image set made in
memory (``DataSplits`` of uint8 tensors), in fp32 and bf16, this prints

- **engine img/s**: images through the stitched training step per second, in steady state
  (``stitchcore.run_matrix`` with ``StitchConfig(epochs=E)``; every training step of every group
  after its first epoch, timed by ``on_step`` with ``torch.cuda.synchronize()``). A group trains
  its k stitches in one batched receiver-suffix pass, so a step moves k × batch images;
- **floor img/s**: the receiver-suffix forward + backward passes alone (frozen weights, gradient
  to the input only, the engine's own cut module and layout and precision) at the same k × batch,
  median of ``--repeats`` timed passes after a warm-up, summed over the groups like the engine's
  steps; **engine/floor** is the goal (≥ 80 % in bf16);
- **peak MiB**: ``torch.cuda.max_memory_allocated`` over the whole matrix (the activation cache
  included: **cache MiB**), and over the floor alone;
- the largest per-cell difference (stitched accuracy in points, and stitched loss) between a
  tiny matrix computed on the CPU and on ``--device``.

One command on a GPU machine that has torch, timm and transformers and cannot download::

    python3 -m pip install --no-deps --no-build-isolation -e . && python3 benchmarks/gpu.py

``--device cpu --smoke`` runs the same code on tiny models (timm resnet10t, vit_tiny at 32 px,
a few images): the test suite runs it (tests/test_benchmarks.py). Everything is printed at the
end as one table; with ``$OUT`` set the results also go to ``$OUT/gpu.json``. Nothing is
asserted about time: the goal is printed as met / not met.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, and nothing is tried

__all__ = ["PAIRS", "Pair", "main", "synthetic_splits"]

NEEDED = ("torch", "timm", "pluggy", "click", "rich", "numpy", "scipy", "sklearn", "matplotlib")
VIT_STAGES = ["norm_pre", "blocks.2", "blocks.5", "blocks.8", "blocks.11"]
GOAL = 0.80  # engine ≥ 80 % of the floor's throughput in bf16


@dataclass(frozen=True)
class Pair:
    name: str
    sender: str
    receiver: str
    receiver_cuts: list[str] | str = "default"
    sender_cuts: list[str] | str = "default"


PAIRS = {
    "full": [
        Pair("r50×r50", "timm:resnet50@random", "timm:resnet50@random"),
        Pair("r50×vitb16", "timm:resnet50@random", "timm:vit_base_patch16_224@random", VIT_STAGES),
    ],
    # the smoke's receiver cuts leave out the early ones: a stitch from a deep cut into them is
    # a subpixel conv with millions of weights, too slow for a test on a shared CPU
    "smoke": [
        Pair("r10t×r10t", "timm:resnet10t@random", "timm:resnet10t@random", ["layer3", "layer4"],
             ["layer2", "layer4"]),
        Pair("r10t×vitti", "timm:resnet10t@random", "timm:vit_tiny_patch16_224@random",
             ["blocks.5", "blocks.11"], ["layer2", "layer4"]),
    ],
}  # fmt: skip


# ----------------------------------------------------------------------------- data and models
def synthetic_splits(classes: int, train_per_class: int, test_per_class: int, size: int, seed=0):
    """A learnable 10-class image set in memory: each class a smooth random colour pattern, each
    image that pattern shifted at random plus noise; uint8 N×3×size×size."""
    import torch
    import torch.nn.functional as F

    from stitchcore.datasets import DataSplits

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(classes, 3, 6, 6, generator=g)
    templates = F.interpolate(low, size=(2 * size, 2 * size), mode="bicubic", align_corners=False)

    def make(per_class: int):
        xs, ys = [], []
        for c in range(classes):
            for _ in range(per_class):
                dy, dx = (int(v) for v in torch.randint(0, size, (2,), generator=g))
                img = templates[c, :, dy : dy + size, dx : dx + size]
                img = 0.7 * img + 0.3 * torch.rand(3, size, size, generator=g)
                xs.append((img.clamp(0, 1) * 255).to(torch.uint8))
                ys.append(c)
        perm = torch.randperm(len(ys), generator=g)
        return torch.stack(xs)[perm], torch.tensor(ys, dtype=torch.int64)[perm]

    train_x, train_y = make(train_per_class)
    test_x, test_y = make(test_per_class)
    return DataSplits(f"synthetic-{classes}x{size}px", train_x, train_y, test_x, test_y, classes,
                      [f"class{c}" for c in range(classes)])  # fmt: skip


def classifier(spec: str, size: int, classes: int):
    """``spec`` built for ``size`` px with a freshly initialised ``classes``-way head (seed 0)."""
    import torch

    from stitchcore.basemodels import at_size
    from stitchcore.sources import build_model

    loaded = at_size(build_model(spec, input_size=size), size)
    torch.manual_seed(0)
    loaded.module.reset_classifier(classes)
    loaded.module.eval()
    return replace(loaded, num_classes=classes, spec=f"{spec}/{classes}-way@{size}px")


# ----------------------------------------------------------------------------- measurements
_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device) -> float:
    """Peak memory since the last reset: GPU memory allocated, or the process's max RSS."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_engine(pair: Pair, models, splits, precision: str, args, out: Path) -> dict:
    """The matrix through ``run_matrix``; steady-state training throughput per group."""
    from stitchcore import MatrixConfig, StitchConfig, make_runtime, run_matrix

    device = make_runtime(args.device, precision).device
    steps: list[float] = []
    by_cut: dict[int, list[float]] = {}

    def on_step(_step: int, _total: int) -> None:
        sync(device)
        steps.append(time.perf_counter())

    def on_cell(cell: dict) -> None:  # called after each group for its cells
        if steps and cell["j"] not in by_cut:
            by_cut[cell["j"]] = steps.copy()
            steps.clear()

    cfg = MatrixConfig(
        sender=models[pair.sender], receiver=models[pair.receiver], data=splits,
        sender_cuts=pair.sender_cuts, receiver_cuts=pair.receiver_cuts, cka=False, precision=precision,
        stitch=StitchConfig(epochs=args.epochs, batch_size=args.batch),
    )  # fmt: skip
    reset_peak(device)
    t0 = time.perf_counter()
    res = run_matrix(cfg, out, device=args.device, cache_gb=args.cache_gb, on_step=on_step,
                     on_cell=on_cell, force=True, log=say)  # fmt: skip
    wall = time.perf_counter() - t0
    peak = peak_mib(device)
    cells = [c for c in res["cells"] if c.get("variant", "main") == "main"]
    n_train = len(splits.train_y)
    spe = sum(1 for s in range(0, n_train, args.batch) if min(args.batch, n_train - s) >= 2)
    groups = []
    for j, stamps in sorted(by_cut.items()):
        members = [c for c in cells if c["j"] == j and c["status"] == "ok" and c.get("epochs")]
        first = spe - 1 if len(stamps) > spe else 0  # skip the first epoch (autotuning, warm-up)
        n_steps = len(stamps) - 1 - first
        if n_steps < 1 or not members:
            continue
        groups.append({
            "receiver_cut": members[0]["receiver_cut"], "k": len(members),
            "steps": n_steps, "seconds": stamps[-1] - stamps[first],
            "images": n_steps * len(members) * args.batch,
        })  # fmt: skip
    bad = [f"{c['sender_cut']}->{c['receiver_cut']}: {c['status']} ({c.get('reason')})"
           for c in cells if c["status"] != "ok"]  # fmt: skip
    accs = [c["stitched_accuracy"] for c in cells if c.get("stitched_accuracy") is not None]
    timings = res.get("timings", {})
    return {
        "groups": groups, "cells": len(cells), "not_ok": bad, "wall_s": wall,
        "cells_s": timings.get("cells_s"), "peak_mib": peak,
        "cache_mib": (timings.get("cache") or {}).get("bytes", 0) / 2**20,
        "cache_mode": (timings.get("cache") or {}).get("mode"),
        "mean_acc": sum(accs) / len(accs) if accs else None,
        "img_s": sum(g["images"] for g in groups) / max(1e-9, sum(g["seconds"] for g in groups)),
    }  # fmt: skip


def planned_groups(pair: Pair, models, splits, args) -> list[dict]:
    """The groups the engine would train (for the floor when the engine run failed)."""
    from stitchcore.engine import Side

    def names(spec, which):
        if which != "default":
            return list(which)
        return [c.name for c in Side.of(copy.deepcopy(models[spec])).cutter.cuts()]

    k = len(names(pair.sender, pair.sender_cuts))
    n = len(splits.train_y)
    spe = sum(1 for s in range(0, n, args.batch) if min(args.batch, n - s) >= 2)
    steps = spe * (args.epochs - 1) if args.epochs > 1 else spe - 1
    return [{"receiver_cut": r, "k": k, "steps": steps, "images": steps * k * args.batch}
            for r in names(pair.receiver, pair.receiver_cuts)]  # fmt: skip


def run_floor(pair: Pair, models, splits, precision: str, args, groups: list[dict]) -> dict:
    """The receiver-suffix forward+backward alone, per group at the engine's k × batch."""
    import torch
    import torch.nn.functional as F

    from stitchcore import make_runtime
    from stitchcore.cuts import run_suffix
    from stitchcore.datasets import adapt
    from stitchcore.engine import Side
    from stitchcore.stitching import freeze

    runtime = make_runtime(args.device, precision)
    dev = runtime.device
    side = Side.of(copy.deepcopy(models[pair.receiver]))
    side.cutter.fast_layout().to(dev)  # the engine's cut modules: same layout, same device
    reset_peak(dev)
    out, spent_total, images_total = [], 0.0, 0
    for g in groups:
        prefix, suffix = side.cutter.split(side.cutter.resolve(g["receiver_cut"]))
        freeze(suffix)
        batch = g["k"] * args.batch
        x = adapt(splits.train_x[: args.batch], side.input).to(dev)  # adapted on the CPU
        with torch.no_grad(), runtime.autocast():
            act = prefix(x)
        z0 = torch.cat([act] * g["k"]).detach()
        y = splits.train_y[: args.batch].repeat(g["k"]).to(dev)

        def step(z0=z0, y=y, suffix=suffix):
            z = z0.clone().requires_grad_(True)
            with runtime.autocast():
                logits = side.logits(run_suffix(suffix, z))
            F.cross_entropy(logits.float(), y).backward()

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.repeats):
            sync(dev)
            t = time.perf_counter()
            step()
            sync(dev)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out.append({"receiver_cut": g["receiver_cut"], "batch": batch, "step_s": med})
        spent_total += med * g["steps"]  # the floor for the engine's steps of this group
        images_total += g["images"]
        del prefix, suffix, z0
    return {
        "groups": out,
        "img_s": images_total / max(1e-9, spent_total),
        "peak_mib": peak_mib(dev),
    }


def cpu_vs_device(args) -> dict:
    """Largest per-cell difference between a tiny matrix on the CPU and on ``--device``."""
    from stitchcore import MatrixConfig, StitchConfig, run_matrix

    splits = synthetic_splits(10, 8, 4, 32, seed=1)
    net = classifier("timm:resnet10t@random", 32, 10)
    results = {}
    for key, device in (("cpu", "cpu"), ("device", args.device)):
        cfg = MatrixConfig(sender=net, receiver=copy.deepcopy(net), data=splits, cka=False,
                           sender_cuts=["layer2", "layer4"], receiver_cuts=["layer3", "layer4"],
                           stitch=StitchConfig(epochs=2, batch_size=16))  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            res = run_matrix(cfg, Path(tmp) / "m", device=device, cache_gb=1.0)
        results[key] = {
            (c["i"], c["j"]): c for c in res["cells"] if c.get("variant", "main") == "main"
        }
    a, b = results["cpu"], results["device"]
    keys = [k for k in a if k in b and a[k].get("stitched_accuracy") is not None
            and b[k].get("stitched_accuracy") is not None]  # fmt: skip
    d_acc = max(abs(a[k]["stitched_accuracy"] - b[k]["stitched_accuracy"]) for k in keys)
    d_loss = max(
        abs((a[k].get("stitched_loss") or 0) - (b[k].get("stitched_loss") or 0)) for k in keys
    )
    return {"cells": len(keys), "max_abs_diff_acc_pts": 100 * d_acc, "max_abs_diff_loss": d_loss,
            "of_cells": len(a)}  # fmt: skip


# ----------------------------------------------------------------------------- main
def table(rows: list[dict], check: dict | None, device: str) -> str:
    mem = "GPU max_memory_allocated" if device.startswith("cuda") else "process max RSS"
    head = (f"{'pair':12} {'prec':5} {'cells':>5} {'engine img/s':>12} {'floor img/s':>11} "
            f"{'engine/floor':>12} {'peak MiB':>9} {'floor MiB':>9} {'cache MiB':>9} "
            f"{'matrix s':>8} {'mean acc %':>10}")  # fmt: skip
    lines = [head]
    for r in rows:
        e, f = r["engine"], r["floor"]
        if "error" in e:
            lines.append(f"{r['pair']:12} {r['precision']:5} engine failed ({e['error']}); "
                         f"floor {f['img_s']:.1f} img/s, floor peak {f['peak_mib']:.0f} MiB")  # fmt: skip
            continue
        acc = "" if e["mean_acc"] is None else f"{100 * e['mean_acc']:.2f}"
        lines.append(
            f"{r['pair']:12} {r['precision']:5} {e['cells']:5d} {e['img_s']:12.1f} "
            f"{f['img_s']:11.1f} {100 * r['ratio']:11.1f}% {e['peak_mib']:9.0f} "
            f"{f['peak_mib']:9.0f} {e['cache_mib']:9.0f} {e['wall_s']:8.1f} {acc:>10}"
        )
    lines.append("per group (receiver cut: k stitches, engine img/s / floor img/s at k × batch):")
    for r in rows:
        floor = {g["receiver_cut"]: g for g in r["floor"]["groups"]}
        parts = []
        for g in r["engine"].get("groups", []):
            f = floor.get(g["receiver_cut"])
            eng = g["images"] / max(1e-9, g["seconds"])
            flo = f["batch"] / max(1e-9, f["step_s"]) if f else float("nan")
            parts.append(f"{g['receiver_cut']} k={g['k']} {eng:.0f}/{flo:.0f}")
        lines.append(f"  {r['pair']} {r['precision']}: " + ", ".join(parts))
    lines.append(f"(peak MiB: {mem}; engine img/s: steady-state training steps, first epoch of "
                 "each group left out; floor: receiver-suffix fwd+bwd alone at the same batch)")  # fmt: skip
    for r in rows:
        if r["engine"].get("not_ok"):
            lines.append(f"  {r['pair']} {r['precision']}: cells not ok: "
                         + "; ".join(r["engine"]["not_ok"][:3]))  # fmt: skip
    for r in rows:
        if r["precision"] == "bf16" and r["ratio"] is not None:
            met = "MET" if r["ratio"] >= GOAL else "NOT MET"
            lines.append(f"goal engine ≥ {100 * GOAL:.0f} % of the floor in bf16, {r['pair']}: "
                         f"{100 * r['ratio']:.1f} % -> {met}")  # fmt: skip
    if check and "error" in check:
        lines.append(f"cpu vs {device}, tiny matrix: failed ({check['error']})")
    elif check:
        lines.append(
            f"cpu vs {device}, tiny matrix ({check['cells']} of {check['of_cells']} cells): max "
            f"|Δ accuracy| = {check['max_abs_diff_acc_pts']:.2f} pts, max |Δ loss| = "
            f"{check['max_abs_diff_loss']:.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny models and data (CPU test)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--pairs", default=None, help="comma-separated pair names (default: all)")
    p.add_argument("--size", type=int, default=None, help="input px (224; smoke 32)")
    p.add_argument("--train-per-class", type=int, default=None, help="(128; smoke 4)")
    p.add_argument("--test-per-class", type=int, default=None, help="(32; smoke 2)")
    p.add_argument("--batch", type=int, default=None, help="per stitch (128; smoke 8)")
    p.add_argument("--epochs", type=int, default=None, help="(3; smoke 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=None, help="floor repeats (10; smoke 2)")
    p.add_argument("--cache-gb", type=float, default=48.0, help="activation cache budget")
    p.add_argument("--no-check", action="store_true", help="skip the CPU-vs-device matrix")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (smoke: 1, stable on a shared machine)")  # fmt: skip
    args = p.parse_args(argv)
    smoke = args.smoke
    for name, full, tiny in (("size", 224, 32), ("train_per_class", 128, 4),
                             ("test_per_class", 32, 2), ("batch", 128, 8), ("epochs", 3, 2),
                             ("repeats", 10, 2)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, tiny if smoke else full)

    import importlib.util

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu.py: missing Python packages: {', '.join(missing)}", file=sys.stderr)
        return 2
    import torch

    from stitchcore import make_runtime

    if args.threads or smoke:
        torch.set_num_threads(args.threads or 1)
    device = make_runtime(args.device).device  # a one-line error when the device is not here
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}", file=sys.stderr)  # fmt: skip
    pairs = PAIRS["smoke" if smoke else "full"]
    if args.pairs:
        pairs = [q for q in pairs if q.name in args.pairs.split(",")]
    splits = synthetic_splits(10, args.train_per_class, args.test_per_class, args.size)
    models = {}
    for q in pairs:
        for spec in (q.sender, q.receiver):
            if spec not in models:
                models[spec] = classifier(spec, args.size, 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for q in pairs:
            for prec in args.precisions.split(","):
                say(f"{q.name} {prec}: engine")
                try:
                    eng = run_engine(q, models, splits, prec, args, Path(tmp) / f"{q.name}-{prec}")
                    groups = eng["groups"]
                except Exception as exc:  # record it, and still measure the floor
                    say(f"{q.name} {prec}: engine failed: {traceback.format_exc()}")
                    first = (str(exc).strip().splitlines() or [""])[0]
                    eng = {"error": f"{type(exc).__name__}: {first}"}
                    groups = planned_groups(q, models, splits, args)
                say(f"{q.name} {prec}: floor")
                flo = run_floor(q, models, splits, prec, args, groups)
                ratio = eng["img_s"] / max(1e-9, flo["img_s"]) if "img_s" in eng else None
                rows.append({"pair": q.name, "precision": prec, "engine": eng, "floor": flo,
                             "ratio": ratio})  # fmt: skip
    check = None
    if not args.no_check:
        say("cpu vs device: tiny matrix")
        try:
            check = cpu_vs_device(args)
        except Exception as exc:
            say(f"cpu vs device failed: {traceback.format_exc()}")
            check = {"error": f"{type(exc).__name__}: {exc}"}
    text = table(rows, check, str(device))
    print(text)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu.json"
        out.write_text(json.dumps({"args": vars(args), "rows": rows, "check": check,
                                   "device": str(device), "torch": torch.__version__}, indent=1))  # fmt: skip
    failed = any("error" in r["engine"] for r in rows) or bool(check and "error" in check)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
