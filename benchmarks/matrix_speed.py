"""How fast and how good is a stitching matrix? The engine's defaults against a converged
published-style loop.

The resnet18 × resnet34 stage matrix (default cuts, 5 × 5 cells) on ``digits``, with the main
job's base models (``stitch matrix --sender timm:resnet18 --receiver timm:resnet34`` trains them
on first use: sender seed 0, receiver seed 1, 4 epochs, in the zoo — ``--zoo``, else
``$STITCHCORE_ZOO``, else ``~/.cache/stitchcore/zoo``), computed in separate processes:

  reference  (a) the published recipe (Bansal et al. / Csiszárik et al.): per cell, both full
             networks run on every training step; a forward hook on the sender's cut module keeps
             its output, a forward hook on the receiver's cut module replaces its output with
             stitch(kept). Random init (the engine's family and seed for that cell), Adam lr 1e-3,
             batch 128, trained **to convergence by the engine's own plateau rule** (the same
             validation slice held out of the training split; an epoch that does not raise the
             validation accuracy — or, at equal accuracy, lower the loss by 1 % — halves the lr;
             2 such epochs in a row stop it; the best validation epoch's weights are restored; 30
             epochs at most). ``--reference-epochs N`` trains N fixed epochs with cosine decay
             instead (the older recipe).
  engine     (c) ``stitchcore.run_matrix`` with the defaults of ``stitch matrix``: least-squares
             init, trained until converged by the same rule (a closed form at chance restarts from
             the random init and learns like (a)), CKA and diagnostics on.
  floor      the receiver-suffix forward + backward passes alone (the receiver's own activation
             standing in for a stitch's output), one epoch per cell, timed pass by pass.

Each mode runs in a fresh subprocess (``--mode X``) that writes one JSON file; the parent reads
the child's CPU time and peak RSS from the kernel (``wait4`` rusage). CPU seconds are the
comparison that survives a shared machine; wall seconds and the load average are printed with
them. Nothing here asserts a time: the goals are printed as met / not met.

``--cells`` picks the cells: ``all`` (25), ``cross`` — one row and one column of the matrix
(``--row`` sender cut, ``--col`` receiver cut: 9 cells), ``column`` (the 5 cells into
``--col``), or a list ``SENDER_CUT:RECEIVER_CUT,…``, for machines where (a) to convergence over
all 25 cells does not fit the time. The engine computes the same cells (a column is
one group; the row's other cells are groups of one), so per-cell differences line up.

    .venv/bin/python benchmarks/matrix_speed.py                         # all 25 cells, all modes
    .venv/bin/python benchmarks/matrix_speed.py --cells cross --row layer3 --col layer2
    .venv/bin/python benchmarks/matrix_speed.py --mode engine --out e.json   # one mode
    .venv/bin/python benchmarks/matrix_speed.py --report a.json,c.json,f.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ReferenceCell", "main", "plateau_train", "report"]

SENDER, RECEIVER = "timm:resnet18", "timm:resnet34"
DATA = "digits"
BASE_EPOCHS = 4
MODES = ("reference", "engine", "floor")
BATCH = 128
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- setup (children)
def _setup(args):
    """Data, both base models exactly as ``stitch matrix`` gets them (trained into the zoo when
    missing), their sides and the selected cuts."""
    from stitchcore.basemodels import base_model
    from stitchcore.datasets import DataOptions, load_data
    from stitchcore.engine import Side

    if args.zoo:
        os.environ["STITCHCORE_ZOO"] = args.zoo
    splits = load_data(DATA, DataOptions(train_size=args.train_size, seed=0))
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    kw = dict(train_size=args.train_size)
    sender, _ = base_model(SENDER, DATA, splits, 0, BASE_EPOCHS, say, **kw)
    receiver, _ = base_model(RECEIVER, DATA, splits, 1, BASE_EPOCHS, say, **kw)
    s_side, r_side = Side.of(sender), Side.of(receiver)
    return splits, s_side, r_side, s_side.cutter.cuts(), r_side.cutter.cuts()


def selected_cells(args, s_names: list[str], r_names: list[str]) -> list[tuple[int, int]]:
    """(i, j) of the cells this run computes, in a fixed order."""
    if args.cells == "all":
        return [(i, j) for j in range(len(r_names)) for i in range(len(s_names))]
    if ":" in args.cells:  # a list of SENDER_CUT:RECEIVER_CUT
        pairs = [c.split(":") for c in args.cells.split(",")]
        bad = [c for c in pairs if len(c) != 2 or c[0] not in s_names or c[1] not in r_names]
        if bad:
            raise SystemExit(f"--cells {args.cells}: cuts are {s_names} and {r_names}")
        return [(s_names.index(a), r_names.index(b)) for a, b in pairs]
    if args.row not in s_names or args.col not in r_names:
        raise SystemExit(f"--row must be one of {s_names} and --col one of {r_names}")
    row, col = s_names.index(args.row), r_names.index(args.col)
    cells = [(i, col) for i in range(len(s_names))]
    if args.cells == "column":
        return cells
    return cells + [(row, j) for j in range(len(r_names)) if j != col]


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


def evaluate(cell: ReferenceCell, xs, xr, y, batch: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the stitched network on the given samples."""
    import torch
    import torch.nn.functional as F

    cell.stitch.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            out = cell.forward(xs[s : s + batch], xr[s : s + batch]).float()
            correct += int((out.argmax(1) == y[s : s + batch]).sum())
            loss += float(F.cross_entropy(out, y[s : s + batch], reduction="sum"))
    return correct / len(y), loss / len(y)


def plateau_train(cell: ReferenceCell, data: dict, cfg, fixed_epochs: int | None = None) -> dict:
    """Train ``cell.stitch`` as (a) does: Adam at ``cfg.lr``, batches of ``cfg.batch_size`` in the
    engine's order, until the engine's plateau rule stops it (see the module docstring), or for
    ``fixed_epochs`` epochs with cosine decay. Returns epochs, stop reason and curves."""
    import torch
    import torch.nn.functional as F

    from stitchcore.trainer import MIN_LOSS_DROP, improves

    xs, xr, y = data["xs"], data["xr"], data["y"]
    train_idx, val_idx = data["train_idx"], data["val_idx"]
    params = [p for p in cell.stitch.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = len(train_idx)
    steps_per_epoch = sum(1 for s in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - s) >= 2)
    cap = fixed_epochs if fixed_epochs is not None else cfg.max_epochs
    total = cap * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    scale, step, bad = 1.0, 0, 0
    best = None  # (accuracy, loss, state)
    val_acc, val_loss, train_curve = [], [], []
    stop = "fixed" if fixed_epochs is not None else "cap"
    epochs = 0
    for _epoch in range(cap):
        cell.stitch.train()
        order = train_idx[torch.randperm(n, generator=gen)]
        sums = [0.0, 0]
        for idx in order.split(cfg.batch_size):
            if len(idx) < 2:
                continue
            lr = cfg.lr * (0.5 * (1 + math.cos(math.pi * step / total)) if fixed_epochs else scale)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(cell.forward(xs[idx], xr[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums[0] += loss.item()
            sums[1] += 1
        epochs += 1
        train_curve.append(sums[0] / max(1, sums[1]))
        if fixed_epochs is not None:
            continue
        acc, loss_v = evaluate(cell, xs[val_idx], xr[val_idx], y[val_idx])
        val_acc.append(acc)
        val_loss.append(loss_v)
        if best is None or improves(acc, loss_v, best[0], best[1], MIN_LOSS_DROP):
            state = {k: v.detach().clone() for k, v in cell.stitch.state_dict().items()}
            best, bad = (acc, loss_v, state), 0
        else:
            bad += 1
            scale *= 0.5
        if bad >= cfg.patience:
            stop = "plateau"
            break
    if best is not None:
        cell.stitch.load_state_dict(best[2])
    cell.stitch.eval()
    return {"epochs": epochs, "stop": stop, "val_curve": val_acc, "val_loss": val_loss,
            "train_curve": train_curve}  # fmt: skip


def run_reference(args) -> dict:
    """Mode (a) over the selected cells."""
    import torch

    from stitchcore.datasets import adapt
    from stitchcore.engine import RunData, cell_seed
    from stitchcore.families import resolve_family
    from stitchcore.stitching import StitchConfig, freeze

    splits, s_side, r_side, s_cuts, r_cuts = _setup(args)
    cfg = StitchConfig()  # the engine's defaults: the plateau rule and its validation slice
    train_idx, val_idx = RunData(splits).fit_val(cfg)
    if args.reference_epochs:
        train_idx = torch.arange(len(splits.train_y))  # fixed epochs: the whole training split
    sender, receiver = freeze(s_side.module), freeze(r_side.module)
    data = {
        "xs": adapt(splits.train_x, s_side.input), "xr": adapt(splits.train_x, r_side.input),
        "y": splits.train_y, "train_idx": train_idx, "val_idx": val_idx,
    }  # fmt: skip
    txs, txr = adapt(splits.test_x, s_side.input), adapt(splits.test_x, r_side.input)
    cells = selected_cells(args, [c.name for c in s_cuts], [c.name for c in r_cuts])
    results, t0 = [], time.perf_counter()
    for i, j in cells:
        s_cut, r_cut = s_cuts[i], r_cuts[j]
        fam, _ = resolve_family("auto", s_cut.spec, r_cut.spec)
        t_cell = time.perf_counter()
        torch.manual_seed(cell_seed(cfg.seed, "main", s_cut.name, r_cut.name))
        stitch = fam.build(s_cut.spec, r_cut.spec)  # the engine's random init for this cell
        cell = ReferenceCell(sender, receiver, s_cut.name, r_cut.name, stitch)
        try:
            info = plateau_train(cell, data, cfg, args.reference_epochs)
            acc, _ = evaluate(cell, txs, txr, splits.test_y)
        finally:
            cell.close()
        results.append({
            "i": i, "j": j, "sender_cut": s_cut.name, "receiver_cut": r_cut.name,
            "family": fam.name, "stitched_accuracy": acc, "time_s": time.perf_counter() - t_cell,
            **info,
        })  # fmt: skip
        print(f"  (a) {s_cut.name}->{r_cut.name}: {100 * acc:.2f} % after {info['epochs']} epochs "
              f"({info['stop']}, {results[-1]['time_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return {"cells": results, "time_s": time.perf_counter() - t0,
            "recipe": f"{args.reference_epochs} ep cosine" if args.reference_epochs else "plateau"}  # fmt: skip


# ----------------------------------------------------------------------------- (c) engine
def run_engine(args) -> dict:
    """Mode (c): ``run_matrix`` with the defaults, over the selected cells (a column is one run,
    the rest of the row another)."""
    from stitchcore import MatrixConfig, run_matrix

    splits, s_side, r_side, s_cuts, r_cuts = _setup(args)  # base models ready, names known
    s_names, r_names = [c.name for c in s_cuts], [c.name for c in r_cuts]
    if args.cells == "all":
        runs = [("default", "default")]
    elif ":" in args.cells:  # one run per receiver cut, with that column's listed senders
        chosen = selected_cells(args, s_names, r_names)
        runs = [([s_names[i] for i, j2 in chosen if j2 == j], [r_names[j]])
                for j in sorted({j for _, j in chosen})]  # fmt: skip
    elif args.cells == "column":
        runs = [("default", [args.col])]
    else:
        row_rest = [n for n in r_names if n != args.col]
        runs = [("default", [args.col]), ([args.row], row_rest)]
    cells, total, engine_s = [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="matrix-speed-") as tmp:
        for k, (sc, rc) in enumerate(runs):
            cfg = MatrixConfig(sender=SENDER, receiver=RECEIVER, data=DATA,
                               train_size=args.train_size, sender_cuts=sc, receiver_cuts=rc)  # fmt: skip
            t0 = time.perf_counter()
            res = run_matrix(cfg, Path(tmp) / f"run{k}", device="cpu", base_epochs=BASE_EPOCHS,
                             log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
            total += time.perf_counter() - t0
            engine_s += res["timings"]["cells_s"]
            for c in res["cells"]:
                if c.get("variant", "main") != "main":
                    continue
                cells.append({
                    **{k2: c.get(k2) for k2 in ("sender_cut", "receiver_cut", "family", "status",
                                                "stitched_accuracy", "init_accuracy", "epochs",
                                                "stop", "from_scratch", "fine_tuned", "reason")},
                    "i": s_names.index(c["sender_cut"]), "j": r_names.index(c["receiver_cut"]),
                })  # fmt: skip
    return {"cells": cells, "time_s": total, "cells_s": engine_s}


# ----------------------------------------------------------------------------- floor
def run_floor(args) -> dict:
    """Receiver-suffix forward+backward over one epoch of batches for every selected cell; only
    those passes are timed (the receiver's own activations stand in for a stitch's output)."""
    import torch
    import torch.nn.functional as F

    from stitchcore.cuts import run_suffix
    from stitchcore.datasets import adapt
    from stitchcore.stitching import freeze

    splits, s_side, r_side, s_cuts, r_cuts = _setup(args)
    r_side.cutter.fast_layout()  # the layout the engine trains in
    cells = selected_cells(args, [c.name for c in s_cuts], [c.name for c in r_cuts])
    x, y = adapt(splits.train_x, r_side.input), splits.train_y
    n = len(y)
    per_cut, per_cut_cpu = {}, {}
    for j in sorted({j for _, j in cells}):
        prefix, suffix = r_side.cutter.split(r_cuts[j])
        freeze(suffix)
        with torch.no_grad():
            acts = torch.cat([prefix(x[s : s + 256]) for s in range(0, n, 256)])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        spent, cpu = 0.0, 0.0
        for idx in order.split(BATCH):
            z = acts[idx].requires_grad_(True)
            t, c = time.perf_counter(), time.process_time()
            loss = F.cross_entropy(r_side.logits(run_suffix(suffix, z)).float(), y[idx])
            loss.backward()
            spent += time.perf_counter() - t
            cpu += time.process_time() - c
        per_cut[r_cuts[j].name] = spent
        per_cut_cpu[r_cuts[j].name] = cpu
    return {"per_cut_epoch_s": per_cut, "per_cut_epoch_cpu_s": per_cut_cpu,
            "per_epoch_s": sum(per_cut[r_cuts[j].name] for _, j in cells), "cells": len(cells)}  # fmt: skip


# ----------------------------------------------------------------------------- parent
def run_child(cmd: list[str], log: Path) -> dict:
    """Run a mode; its exit code, wall and CPU seconds, and peak RSS (MiB) from the kernel, and
    the machine's load average sampled while it ran."""
    import threading

    samples, stop = [], threading.Event()

    def sample():
        while True:
            samples.append(os.getloadavg()[0])
            if stop.wait(30):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "load": sum(samples) / max(1, len(samples))}  # fmt: skip


def mean_acc(cells: list[dict]) -> float | None:
    accs = [c["stitched_accuracy"] for c in cells if c.get("stitched_accuracy") is not None]
    return sum(accs) / len(accs) if accs else None


def report(res: dict) -> str:
    """The tables and the goals, as text, from the modes' results (any subset of them)."""
    ref, eng, floor = (res.get(m) for m in MODES)
    lines = [f"{'mode':34} {'cells':>5} {'wall s':>8} {'CPU s':>8} {'peak MiB':>8} "
             f"{'mean acc %':>10} {'load':>5}"]  # fmt: skip
    labels = {"reference": "(a) published loop, converged", "engine": "(c) engine, defaults",
              "floor": "floor: suffix passes, 1 epoch/cell"}  # fmt: skip
    if ref and ref.get("recipe", "plateau") != "plateau":
        labels["reference"] = f"(a) published loop, {ref['recipe']}"
    for mode in MODES:
        r = res.get(mode)
        if not r:
            continue
        acc = mean_acc(r.get("cells", [])) if mode != "floor" else None
        n = r["cells"] if isinstance(r["cells"], int) else len(r["cells"])
        lines.append(f"{labels[mode]:34} {n:5d} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
                     f"{r['peak_rss_mib']:8.0f} {'' if acc is None else f'{100 * acc:10.2f}':>10} "
                     f"{r['load']:5.1f}")  # fmt: skip
    if ref and eng:
        a = {(c["i"], c["j"]): c for c in ref["cells"]}
        c_ = {(c["i"], c["j"]): c for c in eng["cells"]}
        common = [k for k in a if k in c_ and c_[k].get("stitched_accuracy") is not None]
        lines += ["", f"per cell ({len(common)} cells): accuracy %, epochs and stop reason",
                  f"{'cell':18} {'family':14} {'(a) acc':>8} {'ep':>3} {'stop':>8} "
                  f"{'(c) acc':>8} {'ep':>3} {'stop':>8} {'start':>8} {'Δ pts':>7}"]  # fmt: skip
        deltas = []
        for k in sorted(common, key=lambda k: (k[1], k[0])):
            ra, rc = a[k], c_[k]
            d = 100 * (rc["stitched_accuracy"] - ra["stitched_accuracy"])
            deltas.append(d)
            start = (
                "scratch" if rc.get("from_scratch") else ("lstsq" if rc.get("fine_tuned") else "-")
            )
            lines.append(
                f"{ra['sender_cut'] + '->' + ra['receiver_cut']:18} {str(rc.get('family')):14} "
                f"{100 * ra['stitched_accuracy']:8.2f} {ra['epochs']:3d} {ra['stop']:>8} "
                f"{100 * rc['stitched_accuracy']:8.2f} {rc.get('epochs') or 0:3d} "
                f"{str(rc.get('stop')):>8} {start:>8} {d:+7.2f}"
            )
        ma = mean_acc([a[k] for k in common])
        mc = mean_acc([c_[k] for k in common])
        worst = min(deltas) if deltas else float("nan")
        speed = ref["cpu_s"] / eng["cpu_s"]
        lines += ["", "goals (printed, not asserted):",
                  f"  mean accuracy (c) − (a): {100 * (mc - ma):+.2f} pts (goal ≥ −0.5) -> "
                  f"{'MET' if 100 * (mc - ma) >= -0.5 else 'NOT MET'}",
                  f"  worst cell (c) − (a): {worst:+.2f} pts (goal ≥ −2) -> "
                  f"{'MET' if worst >= -2 else 'NOT MET'}",
                  f"  CPU time (a) / (c): {speed:.1f}× (goal ≥ 10×) -> "
                  f"{'MET' if speed >= 10 else 'NOT MET'}",
                  f"  wall time (a) / (c): {ref['wall_s'] / eng['wall_s']:.1f}× (loads "
                  f"{ref['load']:.1f} / {eng['load']:.1f})"]  # fmt: skip
        if not any(c.get("from_scratch") for c in eng["cells"]):
            lines.append("  (no engine cell learned from scratch)")
    if floor and eng:
        ep = {(c["i"], c["j"]): c.get("epochs") or 0 for c in eng["cells"]}
        names = {(c["i"], c["j"]): c["receiver_cut"] for c in eng["cells"]}
        need = sum(floor["per_cut_epoch_s"][names[k]] * e for k, e in ep.items())
        lines.append(f"  floor for (c)'s {sum(ep.values())} cell-epochs (Σ epochs × suffix passes): "
                     f"{need:.1f} s wall; (c) cells took {eng.get('cells_s', 0):.1f} s of "
                     f"{eng['wall_s']:.1f} s wall")  # fmt: skip
        if "per_cut_epoch_cpu_s" in floor:
            cpu = sum(floor["per_cut_epoch_cpu_s"][names[k]] * e for k, e in ep.items())
            lines.append(f"  the same floor in CPU time: {cpu:.1f} CPU s; (c) used {eng['cpu_s']:.1f} "
                         f"CPU s in all = {eng['cpu_s'] / cpu:.1f}× the floor")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("all", *MODES), default="all")
    p.add_argument("--modes", default=",".join(MODES), help="modes to run under --mode all")
    p.add_argument("--cells", default="all",
                   help="all, cross, column, or a list SENDER_CUT:RECEIVER_CUT,…")  # fmt: skip
    p.add_argument("--row", default="layer3", help="sender cut of the row (--cells cross)")
    p.add_argument("--col", default="layer2", help="receiver cut of the column (--cells cross)")
    p.add_argument("--reference-epochs", type=int, default=None,
                   help="(a) for N fixed epochs with cosine decay instead of the plateau rule")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads per mode")
    p.add_argument("--zoo", default=None, help="zoo of the base models (default: the user's)")
    p.add_argument("--train-size", type=int, default=None, help="fewer training images")
    p.add_argument("--workdir", default="/tmp/stitchcore-bench", help="logs and per-mode JSON")
    p.add_argument("--out", default=None, help="(--mode X) where the mode writes its JSON")
    p.add_argument("--report", default=None, metavar="JSON[,JSON…]",
                   help="print the tables from saved results (later files win)")  # fmt: skip
    args = p.parse_args(argv)

    if args.report:
        results = {}
        for name in args.report.split(","):
            results.update(json.loads(Path(name).read_text())["results"])
        print(report(results))
        return
    if args.mode != "all":
        import torch

        torch.set_num_threads(args.threads)
        run = {"reference": run_reference, "engine": run_engine, "floor": run_floor}[args.mode]
        result = run(args)
        Path(args.out or Path(args.workdir) / f"{args.mode}.json").write_text(json.dumps(result))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    header = [f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}", f"commit: {_commit()}",
              f"load before: {_load()}", f"cells: {args.cells}"
              + {"cross": f" (row {args.row}, column {args.col})",
                 "column": f" (column {args.col})"}.get(args.cells, ""),
              f"torch threads per mode: {args.threads}"]  # fmt: skip
    print("\n".join(header), file=sys.stderr)
    results: dict = {}
    for mode in filter(None, args.modes.split(",")):
        out = work / f"{mode}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--out", str(out),
               "--cells", args.cells, "--row", args.row, "--col", args.col,
               "--threads", str(args.threads)]  # fmt: skip
        for flag, value in (("--zoo", args.zoo), ("--train-size", args.train_size),
                            ("--reference-epochs", args.reference_epochs)):  # fmt: skip
            if value:
                cmd += [flag, str(value)]
        print(f"running {mode} …", file=sys.stderr, flush=True)
        usage = run_child(cmd, work / f"{mode}.log")
        if usage["rc"] != 0:
            raise SystemExit(f"mode {mode} failed (exit {usage['rc']}); see {work / mode}.log")
        results[mode] = {**json.loads(out.read_text()), **usage}
    header.append(f"load after: {_load()}")
    (work / "results.json").write_text(json.dumps({"header": header, "results": results}))
    print("\n".join(header) + "\n\n" + report(results))


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
