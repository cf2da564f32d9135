"""How fast is a stitching matrix? The engine against the loop published code runs.

Computes the resnet18 × resnet34 stage matrix (default cuts, 5 × 5 cells) on ``digits`` — the base
models ``stitch matrix --sender timm:resnet18 --receiver timm:resnet34`` trains on an offline
machine (sender seed 0, receiver seed 1, 4 epochs, from a private zoo) — four ways:

  reference       the published recipe (Bansal et al. / Csiszárik et al.): per cell, both full
                  networks run on every training step; a forward hook on the sender's cut module
                  captures its output, a forward hook on the receiver's cut module replaces its
                  output with stitch(captured). Random init (same family and seed as the engine),
                  Adam lr 1e-3, cosine decay, batch 128, ``--epochs`` epochs.
  engine-random   stitchcore.matrix.Matrix, same random init, same epochs (CKA off: equal work).
  engine-default  stitchcore.matrix.Matrix with ``stitch matrix``'s defaults (lstsq init, 1 epoch,
                  CKA on).
  engine-adaptive (c'): the defaults plus ``--unsolved-epochs`` = ``--epochs``: cells whose lstsq
                  init is at chance (upsample_conv here) restart from the random init and train
                  as (a) and (b) do; the others keep lstsq + 1 epoch.
  floor           only the receiver-suffix forward+backward passes the engine cannot avoid: for
                  every cell, one epoch of batches of the receiver's own activation (a no-op
                  stitch) through the frozen suffix, timed pass by pass; scaled by epochs.

Each mode runs in a fresh subprocess (``--mode X``) that prints one JSON line; the parent reads
its peak memory from the kernel (``wait4`` rusage maxrss), so modes do not inherit each other's
allocations. The parent then times the CLI end to end, in a fresh zoo (base models trained) and
again with the models cached, and prints one table. Nothing here asserts a wall time: the
machine is shared, the numbers are a record, the goals are printed as met / not met.

    .venv/bin/python benchmarks/matrix_speed.py                       # everything (~1 h on 2 cores)
    .venv/bin/python benchmarks/matrix_speed.py --skip-cli --epochs 2 # quick look
    .venv/bin/python benchmarks/matrix_speed.py --mode sweep          # how many epochs (a) needs
    .venv/bin/python benchmarks/matrix_speed.py --mode engine-default # one mode, JSON line
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Epochs for the random-init modes: chosen with ``--mode sweep`` (see benchmarks/README.md);
# mean stitched accuracy of the sweep cells stops rising (within ~0.5 point) from here on.
REFERENCE_EPOCHS = 20
SENDER, RECEIVER = "timm:resnet18", "timm:resnet34"
DATA = "digits"
BASE_EPOCHS = 4
MODES = ("reference", "engine-random", "engine-default", "engine-adaptive", "floor")
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- setup (children)
def _setup(zoo: str, train_size: int | None):
    """Data, both base models (from the zoo, trained there if missing), their cuts."""
    from stitchcore.datasets import DataOptions, load_data
    from stitchcore.zoo import ensure_trained

    splits = load_data(DATA, DataOptions(train_size=train_size, seed=0))
    quiet = lambda _msg: None  # noqa: E731
    sender, s_rec = ensure_trained(
        f"{SENDER}@random", DATA, seed=0, epochs=BASE_EPOCHS, zoo=zoo, log=quiet
    )
    receiver, r_rec = ensure_trained(
        f"{RECEIVER}@random", DATA, seed=1, epochs=BASE_EPOCHS, zoo=zoo, log=quiet
    )
    return splits, sender, receiver, s_rec, r_rec


def _cuts(side, names: list[str] | None):
    return [side.cutter.resolve(n) for n in names] if names else side.cutter.cuts()


# ----------------------------------------------------------------------------- (a) reference
class ReferenceCell:
    """One cell the published way: two full networks and two forward hooks.

    The sender hook keeps the output of the sender's cut module; the receiver hook returns
    ``stitch(kept)`` in place of the receiver cut module's output, so the receiver's own prefix
    still runs (and is thrown away) on every step, as in published stitching code.
    """

    def __init__(self, sender, receiver, s_cut: str, r_cut: str, stitch) -> None:
        self.sender, self.receiver, self.stitch = sender, receiver, stitch
        self._kept = None
        self._hooks = [
            sender.get_submodule(s_cut).register_forward_hook(self._keep),
            receiver.get_submodule(r_cut).register_forward_hook(self._replace),
        ]

    def _keep(self, module, inputs, output):
        self._kept = output.detach().clone()  # the sender may go on to modify it in place

    def _replace(self, module, inputs, output):
        return self.stitch(self._kept)

    def forward(self, xs, xr):
        import torch

        with torch.no_grad():
            self.sender(xs)
        return self.receiver(xr)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def reference_train(cell: ReferenceCell, xs, xr, y, epochs: int, batch: int, lr: float, seed: int):
    """Adam + cosine decay per step, batch order from a generator seeded like the engine's."""
    import torch
    import torch.nn.functional as F

    params = [p for p in cell.stitch.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(y)
    total = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(seed)
    cell.stitch.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(cell.forward(xs[idx], xr[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    cell.stitch.eval()


def reference_accuracy(cell: ReferenceCell, xs, xr, y, batch: int = 256) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            out = cell.forward(xs[start : start + batch], xr[start : start + batch])
            correct += (out.argmax(1) == y[start : start + batch]).sum().item()
    return correct / len(y)


def run_reference(args, cells: list[tuple[int, int]] | None = None, epochs_list=None) -> dict:
    """Mode (a), and the epoch sweep (``epochs_list`` over a few ``cells``)."""
    import torch

    from stitchcore.datasets import adapt
    from stitchcore.families import resolve_family
    from stitchcore.matrix import cell_seed
    from stitchcore.pair import Side
    from stitchcore.stitching import freeze

    splits, s_model, r_model, _, _ = _setup(args.zoo, args.train_size)
    s_side, r_side = Side.of(s_model), Side.of(r_model)
    s_cuts, r_cuts = _cuts(s_side, args.sender_cuts), _cuts(r_side, args.receiver_cuts)
    sender, receiver = freeze(s_side.module), freeze(r_side.module)
    xs, xr = adapt(splits.train_x, s_side.input), adapt(splits.train_x, r_side.input)
    txs, txr = adapt(splits.test_x, s_side.input), adapt(splits.test_x, r_side.input)
    if cells is None and getattr(args, "reference_cells", "all") == "diagonal":
        cells = [(k, k) for k in range(min(len(s_cuts), len(r_cuts)))]
    cells = cells or [(i, j) for j in range(len(r_cuts)) for i in range(len(s_cuts))]
    epochs_list = epochs_list or [args.epochs]
    results, t0 = [], time.perf_counter()
    for i, j in cells:
        fam, _ = resolve_family("auto", s_cuts[i].spec, r_cuts[j].spec)
        for epochs in epochs_list:
            t_cell = time.perf_counter()
            torch.manual_seed(cell_seed(0, "main", i, j))  # the engine's init for this cell
            stitch = fam.build(s_cuts[i].spec, r_cuts[j].spec)
            cell = ReferenceCell(sender, receiver, s_cuts[i].name, r_cuts[j].name, stitch)
            try:
                reference_train(cell, xs, xr, splits.train_y, epochs, 128, 1e-3, seed=0)
                acc = reference_accuracy(cell, txs, txr, splits.test_y)
            finally:
                cell.close()
            results.append({
                "i": i, "j": j, "sender_cut": s_cuts[i].name, "receiver_cut": r_cuts[j].name,
                "family": fam.name, "epochs": epochs, "stitched_accuracy": acc,
                "time_s": time.perf_counter() - t_cell,
            })  # fmt: skip
            if args.mode == "sweep":
                print(f"  cell {s_cuts[i].name}->{r_cuts[j].name} epochs {epochs:3d}: "
                      f"{100 * acc:.1f}%  ({results[-1]['time_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    total = time.perf_counter() - t0
    return {"cells": results, "time_s": total, "epochs": args.epochs,
            "matrix_shape": [len(s_cuts), len(r_cuts)]}  # fmt: skip


def complete_reference(ref: dict, eng_r: dict | None) -> dict:
    """(a) over the whole matrix when only some of its cells were run (``--reference-cells
    diagonal``): the time of each measured cell stands for every cell into its receiver cut (a
    reference step runs both full networks whatever the sender cut; only the receiver's backward
    depends on the cut), and unmeasured cells take (b)'s accuracy, which trains the same stitch
    from the same init on the same batches (the measured cells show how closely they agree)."""
    n_s, n_r = ref["matrix_shape"]
    if len(ref["cells"]) == n_s * n_r:
        return {**ref, "estimated": False}
    per_cut: dict[int, list[float]] = {}
    for c in ref["cells"]:
        per_cut.setdefault(c["j"], []).append(c["time_s"])
    time_s = sum(n_s * sum(t) / len(t) for t in per_cut.values()) * n_r / len(per_cut)
    measured = {(c["i"], c["j"]) for c in ref["cells"]}
    filled = [c for c in (eng_r or {}).get("cells", []) if (c["i"], c["j"]) not in measured]
    return {**ref, "time_s": time_s, "cells": ref["cells"] + filled, "estimated": True,
            "measured_cells": len(measured), "measured_time_s": ref["time_s"]}  # fmt: skip


# ----------------------------------------------------------------------------- (b), (c) engine
def run_engine(args, recipe: str) -> dict:
    """(b) ``recipe="random"``, (c) ``"default"``, (c') ``"adaptive"``: the defaults, except that
    cells whose least-squares init is at chance learn from scratch for ``--epochs`` epochs, i.e.
    exactly as (a) and (b) train them (``stitch matrix --unsolved-epochs``)."""
    random_init = recipe == "random"
    from stitchcore.matrix import Matrix, MatrixConfig, Models
    from stitchcore.stitching import StitchConfig

    splits, s_model, r_model, _, _ = _setup(args.zoo, args.train_size)
    stitch = (
        StitchConfig(init="random", epochs=args.epochs)
        if random_init
        else StitchConfig(epochs=1, unsolved_epochs=args.epochs if recipe == "adaptive" else None)
    )
    cfg = MatrixConfig(
        sender=SENDER, receiver=RECEIVER, data=DATA, train_size=args.train_size,
        sender_cuts=args.sender_cuts or "default", receiver_cuts=args.receiver_cuts or "default",
        cka=not random_init, stitch=stitch,
    )  # fmt: skip
    out = tempfile.mkdtemp(prefix="matrix-speed-")
    try:
        t0 = time.perf_counter()
        matrix = Matrix(cfg, out, Models(s_model, r_model), splits)
        t_setup = time.perf_counter() - t0
        matrix.run()
        total = time.perf_counter() - t0
        acts = matrix._acts.get("real", {})
        cells = [
            {k: c.get(k) for k in ("i", "j", "sender_cut", "receiver_cut", "family", "status",
                                    "stitched_accuracy", "init_accuracy", "group_time_s",
                                    "epochs", "from_scratch")}
            for c in matrix.results.cells()
        ]  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "cells": cells, "time_s": total, "setup_s": t_setup, "epochs": stitch.epochs,
        "sender_pass_s": acts.get("time_s"), "cache_bytes": acts.get("bytes"),
    }  # fmt: skip


# ----------------------------------------------------------------------------- floor
def run_floor(args) -> dict:
    """Receiver-suffix forward+backward over one epoch of batches, for every cell; only those
    passes are timed (the receiver's own activations stand in for a no-op stitch's output)."""
    import torch
    import torch.nn.functional as F

    from stitchcore.cuts import run_suffix
    from stitchcore.datasets import adapt
    from stitchcore.pair import Side
    from stitchcore.stitching import freeze, logits_of

    splits, s_model, r_model, _, _ = _setup(args.zoo, args.train_size)
    freeze(r_model.module)  # frozen receiver: the backward computes input gradients only
    s_side, r_side = Side.of(s_model), Side.of(r_model)
    n_senders = len(_cuts(s_side, args.sender_cuts))
    r_cuts = _cuts(r_side, args.receiver_cuts)
    x, y = adapt(splits.train_x, r_side.input), splits.train_y
    n, batch = len(y), 128
    per_cut = []
    for cut in r_cuts:
        prefix, suffix = r_side.cutter.split(cut)
        with torch.no_grad():
            acts = torch.cat([prefix(x[s : s + 256]) for s in range(0, n, 256)])
        gen = torch.Generator().manual_seed(0)
        spent = 0.0
        for _ in range(n_senders):  # one epoch per cell of this receiver cut
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                if len(idx) < 2:
                    continue
                z = acts[idx].requires_grad_(True)
                t = time.perf_counter()
                loss = F.cross_entropy(logits_of(run_suffix(suffix, z)), y[idx])
                loss.backward()
                spent += time.perf_counter() - t
        per_cut.append({"receiver_cut": cut.name, "time_s": spent})
    return {
        "per_epoch_s": sum(c["time_s"] for c in per_cut),
        "per_cut": per_cut,
        "cells": n_senders * len(r_cuts),
    }


# ----------------------------------------------------------------------------- parent
def run_child(
    cmd: list[str], env: dict | None = None, log: Path | None = None
) -> tuple[int, float, float, str]:
    """Run a command; (exit code, wall seconds, peak RSS MiB from the kernel, stdout)."""
    with tempfile.TemporaryFile("w+") as out:
        err = open(log, "w") if log else subprocess.DEVNULL
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if log:
            err.close()
        out.seek(0)
        return proc.returncode, wall, usage.ru_maxrss / 1024, out.read()


class LoadSampler:
    """The machine's 1-minute load average, sampled every 30 s in a thread while a mode runs:
    on a shared machine the load says how far a wall time can be trusted."""

    def __init__(self) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(30):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / max(1, len(self.samples))


def run_mode(mode: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--zoo", args.zoo,
           "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--reference-cells", args.reference_cells]  # fmt: skip
    if args.train_size:
        cmd += ["--train-size", str(args.train_size)]
    for flag in ("sender_cuts", "receiver_cuts"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", ",".join(getattr(args, flag))]
    log = Path(args.workdir) / f"{mode}.log"
    print(f"running {mode} …", file=sys.stderr, flush=True)
    with LoadSampler() as load:
        rc, wall, rss, stdout = run_child(cmd, log=log)
    if rc != 0:
        raise SystemExit(f"mode {mode} failed (exit {rc}); see {log}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_rss_mib=rss, process_wall_s=wall, load=load.mean)
    return result


def run_cli(args, zoo: str, out: str) -> dict:
    cmd = [str(Path(sys.executable).parent / "stitch"), "matrix", "--sender", SENDER,
           "--receiver", RECEIVER, "--out", out, "--force"]  # fmt: skip
    env = {**os.environ, "STITCHCORE_ZOO": zoo}
    with LoadSampler() as load:
        rc, wall, rss, _ = run_child(cmd, env=env, log=Path(out + ".log"))
    if rc != 0:
        raise SystemExit(f"stitch matrix failed (exit {rc}); see {out}.log")
    timings = json.loads((Path(out) / "matrix.json").read_text()).get("timings", {})
    return {"time_s": wall, "peak_rss_mib": rss, "timings": timings, "load": load.mean}


def mean_acc(cells: list[dict]) -> float | None:
    accs = [c["stitched_accuracy"] for c in cells if c.get("stitched_accuracy") is not None]
    return sum(accs) / len(accs) if accs else None


def report(res: dict, args) -> str:
    """The table, the floor and the goals, as text."""
    ref, eng_r, eng_d, eng_a, floor = (res.get(m) for m in MODES)
    epochs = (eng_r or ref or {}).get("epochs", args.epochs)
    measured_ref = ref
    ref = complete_reference(ref, eng_r) if ref else None
    a_label = "(a) reference, est." if ref and ref["estimated"] else "(a) reference loop"
    rows = [(a_label, ref, f"random init, {epochs} ep"),
            ("(b) engine, same recipe", eng_r, f"random init, {epochs} ep"),
            ("(c) engine, defaults", eng_d, "lstsq init, 1 ep, CKA"),
            ("(c') engine, adaptive", eng_a, f"(c); unsolved {epochs} ep")]  # fmt: skip
    lines = [f"{'mode':24} {'recipe':22} {'cells':>5} {'time s':>8} {'cells/min':>9} "
             f"{'peak MiB':>8} {'mean acc %':>10} {'load':>5}"]  # fmt: skip
    for label, r, recipe in rows:
        if r is None:
            continue
        n, acc = len(r["cells"]), mean_acc(r["cells"])
        lines.append(
            f"{label:24} {recipe:22} {n:5d} {r['time_s']:8.1f} {60 * n / r['time_s']:9.2f} "
            f"{r['peak_rss_mib']:8.0f} {100 * acc if acc is not None else float('nan'):10.2f} "
            f"{r['load']:5.1f}"
        )
    if ref and ref["estimated"]:
        lines.append(f"(a) ran {ref['measured_cells']} cells (diagonal) in "
                     f"{ref['measured_time_s']:.0f} s; its time is extrapolated per receiver cut "
                     f"and the other cells' accuracy taken from (b)")  # fmt: skip
    if eng_d:
        init = mean_acc([{"stitched_accuracy": c.get("init_accuracy")} for c in eng_d["cells"]])
        lines.append(
            f"(c) mean accuracy right after the lstsq init, before its epoch: {100 * init:.2f} %"
        )
    if ref and eng_r:
        by_cell = {(c["i"], c["j"]): c["stitched_accuracy"] for c in measured_ref["cells"]}
        diffs = [abs(c["stitched_accuracy"] - by_cell[(c["i"], c["j"])])
                 for c in eng_r["cells"] if c.get("stitched_accuracy") is not None and (c["i"], c["j"]) in by_cell]  # fmt: skip
        if diffs:
            lines.append(f"(a) vs (b) per cell: largest |Δ accuracy| = {100 * max(diffs):.2f} points "
                         f"over {len(diffs)} cells")  # fmt: skip
    if floor:
        per_epoch = floor["per_epoch_s"]
        lines += ["", f"floor: receiver-suffix fwd+bwd passes alone, {floor['cells']} cells × 1 epoch "
                      f"= {per_epoch:.1f} s (load {floor['load']:.1f})"]  # fmt: skip
        for label, r, ep in (("(b)", eng_r, epochs), ("(c)", eng_d, 1)):
            if r:
                f = per_epoch * ep
                lines.append(f"  {label}: floor × {ep} ep = {f:.1f} s; engine {r['time_s']:.1f} s "
                             f"= {r['time_s'] / f:.2f}× the floor")  # fmt: skip
    lines += ["", "goals (printed, not asserted):"]
    if ref and eng_r:
        speed = ref["time_s"] / eng_r["time_s"]
        delta = 100 * (mean_acc(eng_r["cells"]) - mean_acc(ref["cells"]))
        met = speed >= 2 and abs(delta) <= 0.5
        lines.append(f"  (b) ≥ 2× faster than (a) at equal accuracy (±0.5 pt): {speed:.1f}×, "
                     f"Δacc {delta:+.2f} pt -> {'MET' if met else 'NOT MET'}")  # fmt: skip
    for label, r in (("(c)", eng_d), ("(c')", eng_a)):
        if ref and r:
            speed = ref["time_s"] / r["time_s"]
            delta = 100 * (mean_acc(r["cells"]) - mean_acc(ref["cells"]))
            met = speed >= 10 and delta >= -0.5
            lines.append(f"  {label} ≥ 10× faster than (a), accuracy ≥ (a) − 0.5 pt: {speed:.1f}×, "
                         f"Δacc {delta:+.2f} pt -> {'MET' if met else 'NOT MET'}")  # fmt: skip
    for key, goal, label in (("cli_fresh", 300, "fresh zoo (trains base models)"),
                             ("cli_cached", 120, "base models cached")):  # fmt: skip
        r = res.get(key)
        if r:
            t = r["timings"]
            lines.append(
                f"  stitch matrix --sender {SENDER} --receiver {RECEIVER}, {label}: "
                f"{r['time_s']:.0f} s (base models {t.get('base_models_s', 0):.0f} s, cells "
                f"{t.get('cells_s', 0):.0f} s), peak {r['peak_rss_mib']:.0f} MiB, load "
                f"{r['load']:.1f}; goal ≤ {goal} s -> {'MET' if r['time_s'] <= goal else 'NOT MET'}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("all", "sweep", *MODES), default="all")
    p.add_argument("--epochs", type=int, default=REFERENCE_EPOCHS, help="epochs of (a) and (b)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each mode (1: stable on a shared machine)",
    )
    p.add_argument(
        "--zoo", default="/tmp/stitchcore-bench/zoo", help="private zoo for the base models"
    )
    p.add_argument("--workdir", default="/tmp/stitchcore-bench", help="logs and CLI results")
    p.add_argument(
        "--train-size", type=int, default=None, help="fewer training images (quick runs)"
    )
    p.add_argument("--sender-cuts", type=lambda s: s.split(","), default=None)
    p.add_argument("--receiver-cuts", type=lambda s: s.split(","), default=None)
    p.add_argument("--reference-cells", choices=("all", "diagonal"), default="all",
                   help="cells (a) runs; diagonal: one per receiver cut, time and accuracy of "
                   "the rest completed from them and (b) (see complete_reference)")  # fmt: skip
    p.add_argument("--sweep-epochs", default="5,10,20,40", help="epoch counts the sweep tries")
    p.add_argument(
        "--sweep-with",
        choices=("engine", "reference"),
        default="engine",
        help="trainer for the sweep (the same computation; the engine is cheaper)",
    )
    p.add_argument("--modes", default=",".join(MODES), help="modes to run under --mode all")
    p.add_argument("--skip-cli", action="store_true", help="do not time `stitch matrix` end to end")
    p.add_argument(
        "--json", dest="json_out", default=None, help="also write all results to this file"
    )
    p.add_argument("--report", default=None, metavar="JSON[,JSON…]",
                   help="print the table from --json files of earlier runs (later files win)")  # fmt: skip
    args = p.parse_args(argv)

    if args.report:
        headers, results = [], {}
        for name in args.report.split(","):
            saved = json.loads(Path(name).read_text())
            headers.append(f"[{Path(name).name}] " + "; ".join(saved["header"]))
            results.update(saved["results"])
        print("\n".join(headers) + "\n\n" + report(results, args))
        return
    if args.mode != "all":
        import torch

        torch.set_num_threads(args.threads)
        if args.mode == "reference":
            result = run_reference(args)
        elif args.mode == "sweep":
            result = run_sweep(args)
        elif args.mode == "floor":
            result = run_floor(args)
        else:
            result = run_engine(args, args.mode.removeprefix("engine-"))
        print(json.dumps(result))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    header = [f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}", f"commit: {_commit()}",
              f"load before: {_load()}", f"threads per mode: {args.threads}, epochs (a)/(b): {args.epochs}"]  # fmt: skip
    print("\n".join(header), file=sys.stderr)
    results: dict = {}
    # base models first, outside any timing, so every mode finds them in the zoo
    rc, _, _, _ = run_child([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                             f"import matrix_speed as m; m._setup({args.zoo!r}, {args.train_size!r})"])  # fmt: skip
    if rc != 0:
        raise SystemExit("could not prepare the base models")
    for mode in filter(None, args.modes.split(",")):
        results[mode] = run_mode(mode, args)
    if not args.skip_cli:
        fresh_zoo = str(Path(args.workdir) / "cli-zoo")
        shutil.rmtree(fresh_zoo, ignore_errors=True)
        print("timing stitch matrix in a fresh zoo …", file=sys.stderr, flush=True)
        results["cli_fresh"] = run_cli(args, fresh_zoo, str(Path(args.workdir) / "cli-fresh"))
        print("timing stitch matrix with cached base models …", file=sys.stderr, flush=True)
        results["cli_cached"] = run_cli(args, fresh_zoo, str(Path(args.workdir) / "cli-cached"))
    header.append(f"load after: {_load()}")
    text = "\n".join(header) + "\n\n" + report(results, args)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"header": header, "results": results}, indent=1))


def run_sweep(args) -> dict:
    """Stitched accuracy of a few random-init cells after E epochs, for each E of the sweep.

    Cells are ``--sender-cuts`` × ``--receiver-cuts`` (default: act1,layer2,layer4 ×
    layer2,layer3: both spatial families, early and late senders, the cheaper receiver cuts).
    Each E is its own run (the cosine schedule spans all epochs), with the reference loop or the
    engine's group training, which trains each cell identically.
    """
    args.sender_cuts = args.sender_cuts or ["act1", "layer2", "layer4"]
    args.receiver_cuts = args.receiver_cuts or ["layer2", "layer3"]
    epochs = [int(e) for e in args.sweep_epochs.split(",")]
    cells, t0 = [], time.perf_counter()
    if args.sweep_with == "reference":
        cells = run_reference(args, None, epochs)["cells"]
    else:
        for e in epochs:
            args.epochs = e
            t = time.perf_counter()
            run = run_engine(args, "random")["cells"]
            cells += [{**c, "epochs": e} for c in run]
            print(f"  epochs {e:3d}: mean {100 * mean_acc(run):.1f}% ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(sweep_table(cells, epochs), file=sys.stderr)
    return {"cells": cells, "epochs": epochs, "time_s": time.perf_counter() - t0}


def sweep_table(cells: list[dict], epochs: list[int]) -> str:
    """Accuracy per sweep cell and epoch count, and the mean per epoch count."""
    names = sorted({(c["i"], c["j"], c["sender_cut"], c["receiver_cut"]) for c in cells})
    acc = {(c["i"], c["j"], c["epochs"]): c["stitched_accuracy"] for c in cells}
    lines = [f"{'cell':22}" + "".join(f"{e:>8d}" for e in epochs)]
    for i, j, s, r in names:
        lines.append(f"{s + '->' + r:22}" + "".join(f"{100 * acc[(i, j, e)]:8.1f}" for e in epochs))
    means = [sum(acc[(i, j, e)] for i, j, _, _ in names) / len(names) for e in epochs]
    lines.append(f"{'mean':22}" + "".join(f"{100 * m:8.1f}" for m in means))
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
