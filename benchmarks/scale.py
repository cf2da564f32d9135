"""Does a streamed matrix stay flat in memory as the dataset grows? ResNet-50 on image folders.

Generates an ImageNet-layout JPEG folder (``train/CLASS/*.jpg``, ``val/CLASS/*.jpg``, 224 px,
synthetic: each class a smooth colour pattern, each image a random crop of it plus noise) for
each size (hard links into the largest, so disk holds one copy), then for each size runs a
ResNet-50 × ResNet-50 stage matrix (timm ``@random`` and ``@random-1`` weights with a 10-way head)
through ``stitchcore.run_matrix`` in **streaming** mode (``cache_mode="stream"``: nothing cached,
the sender prefix runs again for every batch) with the images read lazily by ``imagefolder:PATH``
through DataLoader workers, one epoch (``StitchConfig(epochs=1)``), in a fresh process per size.

Printed per size: images/s of the training steps and of the whole matrix, the peak memory of
the process (``ru_maxrss`` from the kernel) and of its whole process tree (the DataLoader workers
included: the largest sum of their proportional set sizes, sampled every 0.5 s), and the engine
against the **floor**: the receiver-suffix forward + backward passes alone at the same batch
(k stitches × batch), timed in a separate process (median of repeats) and multiplied by the
engine's number of steps. Goals (printed, not asserted): peak memory flat within 10 % from the
smallest to the largest size; engine time within 1.5× of the floor. Every size has at least
``MIN_VAL`` test images, so that every size evaluates in batches of 256 (the peaks compare).

    .venv/bin/python benchmarks/scale.py                                  # the defaults
    .venv/bin/python benchmarks/scale.py --sizes 500,1000,2000 --input-size 112
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["main", "make_folder", "tree_memory"]

SENDER, RECEIVER = "timm:resnet50@random", "timm:resnet50@random-1"
CLASSES = 10
#: the fewest test images per size: one full evaluation batch of the engine (256, its
#: ``EVAL_BATCH``), rounded up to whole classes, so that every size evaluates in batches of the
#: same size and the peaks compare (a 50-image test split evaluates in one batch of 50)
MIN_VAL = 260


# ----------------------------------------------------------------------------- data
def make_folder(root: Path, train: int, val: int, px: int = 224, classes: int = CLASSES) -> Path:
    """An ImageNet-layout folder of ``train`` + ``val`` synthetic JPEGs (balanced classes).
    Reuses images already there (same names, same content: seeded per image)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    low = rng.random((classes, 6, 6, 3))
    templates = [
        np.asarray(
            Image.fromarray((low[c] * 255).astype(np.uint8)).resize(
                (2 * px, 2 * px), Image.BICUBIC
            ),
            dtype=np.float32,
        )
        for c in range(classes)
    ]
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n // classes):
                path = folder / f"{split}_{c}_{k:06d}.JPEG"
                if path.exists():
                    continue
                r = np.random.default_rng([c, k, split == "train"])
                dy, dx = r.integers(0, px, 2)
                img = templates[c][dy : dy + px, dx : dx + px]
                img = 0.7 * img + 0.3 * 255 * r.random((px, px, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


def subset(full: Path, root: Path, train: int, val: int, classes: int = CLASSES) -> Path:
    """``root`` holding the first ``train``/``val`` images per class of ``full`` as hard links."""
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            src, dst = full / split / f"n{c:08d}", root / split / f"n{c:08d}"
            dst.mkdir(parents=True, exist_ok=True)
            for k in range(n // classes):
                name = f"{split}_{c}_{k:06d}.JPEG"
                if not (dst / name).exists():
                    os.link(src / name, dst / name)
    return root


# ----------------------------------------------------------------------------- children
def ten_way(spec: str, size: int):
    """``spec`` run at ``size`` px with a fresh 10-way head (seed 0)."""
    from dataclasses import replace

    import torch

    from stitchcore.basemodels import at_size
    from stitchcore.sources import load_model

    loaded = at_size(load_model(spec), size)
    torch.manual_seed(0)
    loaded.module.reset_classifier(CLASSES)
    return replace(loaded, num_classes=CLASSES, spec=f"{spec}/10-way")


def run_engine(args) -> dict:
    """One size: the matrix, streamed; training steps timed by ``on_step``."""
    import resource
    import tempfile

    from stitchcore import MatrixConfig, StitchConfig, run_matrix
    from stitchcore.heap import steady_heap

    stamps: list[tuple[float, float]] = []  # (wall, CPU of this process) after each step
    groups: list[list[tuple[float, float]]] = []

    def on_step(_s: int, _t: int) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    def on_cell(_cell: dict) -> None:
        if stamps:
            groups.append(stamps.copy())
            stamps.clear()

    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    cfg = MatrixConfig(
        sender=ten_way(SENDER, args.input_size), receiver=ten_way(RECEIVER, args.input_size),
        data=f"imagefolder:{args.folder}", sender_cuts=args.sender_cuts,
        receiver_cuts=args.receiver_cuts, cka=False,
        stitch=StitchConfig(epochs=1, batch_size=args.batch, init_samples=args.init_samples),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        t0 = time.perf_counter()
        res = run_matrix(cfg, Path(tmp) / "m", device="cpu", cache_mode="stream",
                         workers=args.workers, on_step=on_step, on_cell=on_cell, log=say)  # fmt: skip
        wall = time.perf_counter() - t0
    cells = [c for c in res["cells"] if c.get("variant", "main") == "main"]
    train_s = sum(g[-1][0] - g[0][0] for g in groups if len(g) > 1)
    train_cpu_s = sum(g[-1][1] - g[0][1] for g in groups if len(g) > 1)
    steps = sum(len(g) - 1 for g in groups if len(g) > 1)
    return {
        "wall_s": wall, "cells_s": res["timings"]["cells_s"], "train_s": train_s,
        "train_cpu_s": train_cpu_s, "steps": steps,
        "steps_total": sum(len(g) for g in groups), "cache": res["timings"]["cache"],
        "group_steps": [len(g) - 1 for g in groups],
        "cells": [{k: c.get(k) for k in ("sender_cut", "receiver_cut", "family", "status",
                                          "stitched_accuracy")} for c in cells],
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "heap": steady_heap(),
    }  # fmt: skip


def run_floor(args) -> dict:
    """The receiver-suffix fwd+bwd alone at k × batch, per receiver cut; median of repeats."""
    import statistics

    import torch
    import torch.nn.functional as F

    from stitchcore.cuts import run_suffix
    from stitchcore.engine import Side
    from stitchcore.runtime import make_runtime
    from stitchcore.stitching import freeze

    make_runtime("cpu")  # the engine's host settings (steady heap, denormals flushed)

    side = Side.of(ten_way(RECEIVER, args.input_size))
    side.cutter.fast_layout()
    s_count = len(args.sender_cuts)
    out = {}
    for name in args.receiver_cuts:
        prefix, suffix = side.cutter.split(side.cutter.resolve(name))
        freeze(suffix)
        batch = s_count * args.batch
        x = torch.randn(args.batch, 3, args.input_size, args.input_size)
        with torch.no_grad():
            z0 = torch.cat([prefix(x)] * s_count)
        y = torch.randint(0, CLASSES, (batch,))
        times, cpu = [], []
        for rep in range(args.repeats + 1):
            z = z0.clone().requires_grad_(True)
            t, c = time.perf_counter(), time.process_time()
            F.cross_entropy(side.logits(run_suffix(suffix, z)), y).backward()
            if rep:  # the first pass is the warm-up (oneDNN picks its kernels)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        out[name] = {"batch": batch, "step_s": statistics.median(times),
                     "step_cpu_s": statistics.median(cpu), "times": times, "cpu": cpu}  # fmt: skip
    return out


# ----------------------------------------------------------------------------- parent
def tree_memory(pid: int) -> int:
    """Proportional set size (bytes) of ``pid`` and all its descendants (RSS where PSS is not
    readable): forked DataLoader workers share most of their pages with the parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
            key = "Pss:"
        except OSError:
            try:
                text, key = Path(f"/proc/{p}/status").read_text(), "VmRSS:"
            except OSError:
                continue
        for line in text.splitlines():
            if line.startswith(key):
                total += int(line.split()[1]) * 1024
                break
    return total


def run_child(cmd: list[str], log: Path) -> dict:
    """Run a child; exit code, wall and CPU seconds, its own peak RSS (kernel) and the peak
    memory of its process tree (sampled), and the mean load average while it ran."""
    peak, loads, stop = [0], [], threading.Event()
    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], tree_memory(proc.pid))
                loads.append(os.getloadavg()[0])
                stop.wait(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        thread.join()
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024,
            "tree_mib": peak[0] / 2**20, "load": sum(loads) / max(1, len(loads)),
            "stdout": stdout}  # fmt: skip


def report(rows: list[dict], floor: dict, args) -> str:
    k = len(args.sender_cuts)
    lines = [f"{'train imgs':>10} {'val':>5} {'steps':>5} {'train img/s':>11} {'matrix s':>8} "
             f"{'train s':>8} {'floor s':>8} {'×floor':>6} {'train CPU s':>11} {'floor CPU s':>11} "
             f"{'×floor':>6} {'peak RSS MiB':>12} {'tree PSS MiB':>12} {'CPU s':>7} {'load':>5}"]  # fmt: skip
    for r in rows:
        e = r["engine"]
        # the same steps as train s counts (each group's first step starts its clock)
        pairs = list(zip(args.receiver_cuts, e["group_steps"]))
        r["floor_s"] = floor_s = sum(floor[c]["step_s"] * n for c, n in pairs)
        r["floor_cpu_s"] = floor_cpu = sum(floor[c]["step_cpu_s"] * n for c, n in pairs)
        # images in the timed steps: all but each group's first batch
        img_s = len(pairs) * (r["train"] - args.batch) * k / max(1e-9, e["train_s"])
        lines.append(
            f"{r['train']:10d} {r['val']:5d} {e['steps_total']:5d} {img_s:11.1f} "
            f"{e['cells_s']:8.1f} {e['train_s']:8.1f} {floor_s:8.1f} "
            f"{e['train_s'] / max(1e-9, floor_s):6.2f} {e['train_cpu_s']:11.1f} {floor_cpu:11.1f} "
            f"{e['train_cpu_s'] / max(1e-9, floor_cpu):6.2f} {r['rss_mib']:12.0f} "
            f"{r['tree_mib']:12.0f} {r['cpu_s']:7.0f} {r['load']:5.1f}"
        )
    lines.append("(train s: the training steps of all groups, first step to last, wall and CPU of "
                 "the main process; floor s: the receiver-suffix fwd+bwd alone × the same number "
                 "of steps; matrix s: all of run_matrix's cell work, incl. least-squares sampling "
                 "and evaluation; CPU s: the whole child process)")  # fmt: skip
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        for key, label in (("rss_mib", "process peak RSS"), ("tree_mib", "process tree PSS")):
            growth = hi[key] / lo[key] - 1
            lines.append(f"goal {label} flat within 10 % from {lo['train']} to {hi['train']} "
                         f"images: {100 * growth:+.1f} % -> {'MET' if abs(growth) <= 0.10 else 'NOT MET'}")  # fmt: skip
        for key, floor_key, label in (("train_s", "floor_s", "wall"),
                                      ("train_cpu_s", "floor_cpu_s", "CPU")):  # fmt: skip
            worst = max(r["engine"][key] / r[floor_key] for r in rows)
            lines.append(f"goal training steps within 1.5× the floor ({label} time): worst "
                         f"{worst:.2f}× -> {'MET' if worst <= 1.5 else 'NOT MET'}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,2000,4000", help="training images per run")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help=f"val images per train image (at least {MIN_VAL})",
    )
    p.add_argument("--px", type=int, default=224, help="JPEG size")
    p.add_argument("--input-size", type=int, default=224, help="model input px")
    p.add_argument("--sender-cuts", type=lambda s: s.split(","), default=["layer1", "layer2"])
    p.add_argument("--receiver-cuts", type=lambda s: s.split(","), default=["layer3"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--init-samples", type=int, default=512, help="least-squares samples")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    p.add_argument("--repeats", type=int, default=5, help="floor repeats")
    p.add_argument("--heap", choices=("steady", "default"), default="steady",
                   help="glibc heap of the children: the engine's steady one, or glibc's own "
                   "(STITCHCORE_HEAP=default), for comparison")  # fmt: skip
    p.add_argument("--root", default="/tmp/stitchcore-scale", help="where the folders go")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", choices=("engine", "floor"), default=None)
    p.add_argument("--folder", default=None)
    args = p.parse_args(argv)

    if args.heap == "default":  # read by stitchcore.heap in the children
        os.environ["STITCHCORE_HEAP"] = "default"
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        run = run_engine if args.child == "engine" else run_floor
        print(json.dumps(run(args)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.root)
    header = [f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}", f"load before: {_load()}",
              f"matrix: {SENDER} × {RECEIVER} (10-way heads), sender cuts {args.sender_cuts}, "
              f"receiver cuts {args.receiver_cuts}, input {args.input_size} px, JPEGs {args.px} px, "
              f"batch {args.batch} per stitch, 1 epoch, streamed, {args.workers} DataLoader "
              f"worker(s), {args.threads} torch thread(s), {args.heap} heap"]  # fmt: skip
    print("\n".join(header), file=sys.stderr, flush=True)
    val = lambda n: max(MIN_VAL, int(round(args.val_fraction * n / CLASSES)) * CLASSES)  # noqa: E731
    t = time.perf_counter()
    full = make_folder(root / "full", sizes[-1], val(sizes[-1]), args.px)
    print(f"JPEG folder of {sizes[-1]} + {val(sizes[-1])} images ready in "
          f"{time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--input-size", str(args.input_size), "--sender-cuts", ",".join(args.sender_cuts),
              "--receiver-cuts", ",".join(args.receiver_cuts), "--batch", str(args.batch),
              "--threads", str(args.threads), "--workers", str(args.workers),
              "--init-samples", str(args.init_samples), "--repeats", str(args.repeats)]  # fmt: skip
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fl = run_child([*me, "--child", "floor", *common], logs / "floor.log")
    if fl["rc"] != 0:
        raise SystemExit(f"floor failed; see {logs / 'floor.log'}")
    floor = json.loads(fl["stdout"].strip().splitlines()[-1])
    rows = []
    for n in sizes:
        folder = subset(full, root / f"n{n}", n, val(n))
        print(f"size {n}: running …", file=sys.stderr, flush=True)
        r = run_child([*me, "--child", "engine", "--folder", str(folder), *common],
                      logs / f"engine-{n}.log")  # fmt: skip
        if r["rc"] != 0:
            raise SystemExit(f"size {n} failed; see {logs / f'engine-{n}.log'}")
        r["engine"] = json.loads(r.pop("stdout").strip().splitlines()[-1])
        r.update(train=n, val=val(n))
        rows.append(r)
        print(f"size {n}: {r['wall_s']:.0f} s, peak RSS {r['rss_mib']:.0f} MiB, tree "
              f"{r['tree_mib']:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
        if args.json:  # so far, in case the run is stopped
            Path(args.json).write_text(json.dumps({"header": header, "rows": rows, "floor": floor}))
    header.append(f"load after: {_load()}")
    text = "\n".join(header) + "\n\n" + report(rows, floor, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows, "floor": floor}))


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
