"""Cross-depth stitching (Hernandez et al. 2022): ResNet-18 × ResNet-34 with three random controls.

Every ResNet-18 stage boundary (rows, sender) is stitched into every ResNet-34 stage boundary
(columns, receiver), and the same matrix is computed with a randomly initialised sender, receiver
and both. The paper: high accuracy in the lower-left triangle (the sender's layer later than the
receiver's), a random sender only into early receiver layers, a random receiver only from late
sender layers.

The paper works block by block on CIFAR-10. Here the grid is stage by stage (5 × 5: stem and
four stages; 9 × 17 blocks × 4 variants is too much for a 2-core CPU), on ``digits`` with the
main job's base models (``stitch matrix --sender timm:resnet18 --receiver timm:resnet34``
trains the same two, seeds 0 and 1, 4 epochs, so a shared zoo reuses them), rather than on
Fashion-MNIST, whose two base models would cost another half hour of CPU. Every stitch trains
until its validation accuracy/loss plateaus (the engine's default); ``--family`` forces one
family instead of ``auto`` (``upsample_conv``: the earlier choice for a smaller sender map, which
then stitches only the cells with the sender deeper than the receiver), ``--main-only`` leaves
out the three controls and ``--seed`` sets the stitches' seed.

    .venv/bin/python examples/cross-depth/run.py --threads 1 --zoo ~/.cache/stitchcore/zoo
    .venv/bin/python examples/cross-depth/run.py --family upsample_conv --main-only
    .venv/bin/python examples/cross-depth/run.py --mini     # miniature mode (CI)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pct, study_main  # noqa: E402

#: ``stitch_epochs`` None: until converged (at most ``max_epochs``); mini: one fixed epoch.
FULL = {"data": "digits", "base_train_size": None, "train_size": None, "base_epochs": 4,
        "stitch_epochs": None, "max_epochs": 30}  # fmt: skip
MINI = {"data": "digits", "base_train_size": 200, "train_size": 200, "base_epochs": 1,
        "stitch_epochs": 1, "max_epochs": 30, "cuts": ["act1", "layer2", "layer4"]}  # fmt: skip
SENDER, RECEIVER = "timm:resnet18", "timm:resnet34"
VARIANTS = ("main", "random-sender", "random-receiver", "random-both")


def options(ap) -> None:
    ap.add_argument("--family", default="auto", help="stitch family for every cell (default auto)")
    ap.add_argument("--main-only", action="store_true", help="leave out the three controls")
    ap.add_argument("--seed", type=int, default=0, help="the stitches' seed (default 0)")


def run(out: Path, zoo: Path, mini: bool, log, family="auto", main_only=False, seed=0) -> dict:
    import stitchcore
    from stitchcore.zoo import ensure_trained

    p = MINI if mini else FULL
    variants = VARIANTS[:1] if main_only else VARIANTS
    os.environ["STITCHCORE_ZOO"] = str(zoo)
    names = [
        ensure_trained(f"{model}@random", p["data"], seed=seed, epochs=p["base_epochs"], zoo=zoo,
                       train_size=p["base_train_size"], log=log)[0].spec
        for model, seed in ((SENDER, 0), (RECEIVER, 1))
    ]  # fmt: skip
    cfg = stitchcore.MatrixConfig(
        sender=names[0], receiver=names[1], data=p["data"], train_size=p["train_size"],
        sender_cuts=p.get("cuts", "default"), receiver_cuts=p.get("cuts", "default"),
        controls=list(variants[1:]), cka=True,
        stitch=stitchcore.StitchConfig(family=family, epochs=p["stitch_epochs"],
                                       max_epochs=p["max_epochs"], seed=seed),
    )  # fmt: skip
    matrix = stitchcore.run_matrix(cfg, out / "matrix", force=True, log=log)
    n_s, n_r = len(matrix["cuts"]["sender"]), len(matrix["cuts"]["receiver"])
    grids = {key: {v: [[None] * n_r for _ in range(n_s)] for v in variants} for key in CELL}
    for c in matrix["cells"]:
        for key in CELL:
            grids[key][c["variant"]][c["i"]][c["j"]] = c.get(key)
    return {
        "params": p, "family": family, "seed": seed, "sender": SENDER, "receiver": RECEIVER,
        "models": names, "sender_cuts": [c["name"] for c in matrix["cuts"]["sender"]],
        "receiver_cuts": [c["name"] for c in matrix["cuts"]["receiver"]],
        "accuracy": grids.pop("stitched_accuracy"), "cells": grids,
        "cka": matrix["cka"].get("main"), "baselines": matrix["baselines"],
        "triangles": triangles(grids_of(matrix, variants)), "convergence": convergence(matrix),
        "matrix_timings": matrix["timings"],
    }  # fmt: skip


#: What results.json keeps of every cell, as variant → sender cut × receiver cut grids.
CELL = ("stitched_accuracy", "init_accuracy", "family", "epochs", "stop", "from_scratch",
        "status", "agreement", "match_r2", "ood_score")  # fmt: skip


def grids_of(matrix: dict, variants) -> dict:
    n_s, n_r = len(matrix["cuts"]["sender"]), len(matrix["cuts"]["receiver"])
    grids = {v: [[None] * n_r for _ in range(n_s)] for v in variants}
    for c in matrix["cells"]:
        grids[c["variant"]][c["i"]][c["j"]] = c.get("stitched_accuracy")
    return grids


def convergence(matrix: dict) -> dict:
    """Per variant: how the trained cells stopped (plateau, cap, fixed) and their epochs."""
    out: dict = {}
    for c in matrix["cells"]:
        if c.get("stop") is None:
            continue
        v = out.setdefault(c["variant"], {"stops": {}, "epochs": []})
        v["stops"][c["stop"]] = v["stops"].get(c["stop"], 0) + 1
        v["epochs"].append(c.get("epochs"))
    for v in out.values():
        epochs = [e for e in v.pop("epochs") if e is not None]
        v["epochs_min"], v["epochs_max"] = (min(epochs), max(epochs)) if epochs else (None, None)
        v["epochs_mean"] = sum(epochs) / len(epochs) if epochs else None
    return out


def triangles(grids: dict) -> dict:
    """Mean accuracy per variant below the diagonal (sender deeper than receiver), on it, and
    above it, by stage index (both networks have the same stage boundaries)."""
    out = {}
    for v, grid in grids.items():
        parts = {"lower": [], "diagonal": [], "upper": []}
        for i, row in enumerate(grid):
            for j, acc in enumerate(row):
                if acc is not None:
                    parts["lower" if i > j else "diagonal" if i == j else "upper"].append(acc)
        out[v] = {k: (sum(a) / len(a) if a else None) for k, a in parts.items()}
    return out


def plot(result: dict, out: Path) -> list[Path]:
    """The engine's heatmap of the four variants (and CKA), copied under the study's name."""
    src = out / "matrix" / "heatmap.png"
    dst = out / "cross-depth.png"
    shutil.copyfile(src, dst)
    return [dst]


def table(result: dict) -> str:
    lines = []
    for v in result["accuracy"]:
        lines.append(f"{v}: stitched accuracy % (rows {SENDER}, columns {RECEIVER})")
        lines.append(f"{'':10}" + "".join(f"{c:>9}" for c in result["receiver_cuts"]))
        for name, row in zip(result["sender_cuts"], result["accuracy"][v]):
            lines.append(f"{name:10}" + "".join(f"{pct(a):>9}" for a in row))
    lines.append(f"{'variant':16} {'lower (sender deeper)':>22} {'diagonal':>9} {'upper':>7}")
    for v, t in result["triangles"].items():
        lines.append(f"{v:16} {pct(t['lower']):>22} {pct(t['diagonal']):>9} {pct(t['upper']):>7}")
    for v, c in result["convergence"].items():
        stops = ", ".join(f"{n} {stop}" for stop, n in sorted(c["stops"].items()))
        mean = "-" if c["epochs_mean"] is None else f"{c['epochs_mean']:.1f}"
        lines.append(f"{v}: {stops}; epochs {c['epochs_min']}–{c['epochs_max']} (mean {mean})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return study_main("cross-depth", __doc__.splitlines()[0], run, plot, table, argv, options)


if __name__ == "__main__":
    main()
