"""Stitching connectivity (Bansal et al. 2021, §4, Fig. 2A), and CKA beside it (Table 1).

Two ResNet-18s trained on the same data with different seeds; a stitch at every stage boundary
(sender cut i into receiver cut i); the penalty (receiver accuracy − stitched accuracy) per layer,
with a randomly initialised sender as the control and linear CKA between the two networks at the
same layer. The paper: the penalty stays within a few points at every layer, while a random
sender is far worse at later layers.

CIFAR-10 cannot be had offline here: Fashion-MNIST (Debian package ``dataset-fashion-mnist``)
stands in for it, on a training subset sized for a 2-core CPU.

    .venv/bin/python examples/connectivity/run.py --threads 1          # full study
    .venv/bin/python examples/connectivity/run.py --threads 1 --seed 1 # another stitch seed
    .venv/bin/python examples/connectivity/run.py --mini               # miniature mode (CI)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pct, study_main  # noqa: E402

#: ``stitch_epochs`` None: every stitch trains until converged (the engine's default: a 10 %
#: validation slice of the training subset decides, at most ``max_epochs``); mini: one fixed
#: epoch. ``seed``: the stitches' seed (``--seed``).
FULL = {"data": "fashion-mnist", "train_size": 4000, "base_epochs": 3, "stitch_epochs": None,
        "max_epochs": 30}  # fmt: skip
MINI = {"data": "digits", "train_size": 200, "base_epochs": 1, "stitch_epochs": 1,
        "max_epochs": 30}  # fmt: skip
MODEL = "timm:resnet18"


def options(ap) -> None:
    ap.add_argument("--seed", type=int, default=0, help="the stitches' seed (default 0)")


def run(out: Path, zoo: Path, mini: bool, log, seed: int = 0) -> dict:
    import stitchcore
    from stitchcore.zoo import ensure_trained

    p = MINI if mini else FULL
    os.environ["STITCHCORE_ZOO"] = str(zoo)  # zoo:NAME specs below resolve here
    names = []
    for base_seed in (0, 1):  # not ``seed``: that is the stitches' seed, used below
        loaded, _ = ensure_trained(
            f"{MODEL}@random", p["data"], seed=base_seed, epochs=p["base_epochs"], zoo=zoo,
            train_size=p["train_size"], log=log,
        )  # fmt: skip
        names.append(loaded.spec)
    cfg = stitchcore.MatrixConfig(
        sender=names[0], receiver=names[1], diagonal=True, data=p["data"],
        train_size=p["train_size"], controls=["random-sender"], cka=True,
        stitch=stitchcore.StitchConfig(epochs=p["stitch_epochs"], max_epochs=p["max_epochs"],
                                       seed=seed),
    )  # fmt: skip
    matrix = stitchcore.run_matrix(cfg, out / "matrix", force=True, log=log)
    return {"params": p, "seed": seed, "model": MODEL, "models": names,
            "layers": layers(matrix), "baselines": matrix["baselines"],
            "matrix_timings": matrix["timings"]}  # fmt: skip


def layers(matrix: dict) -> list[dict]:
    """One row per stage boundary: penalty of the real and the random-sender stitch, and CKA."""
    rows = {}
    for c in matrix["cells"]:
        row = rows.setdefault(c["i"], {"layer": c["sender_cut"]})
        key = "real" if c["variant"] == "main" else "random_sender"
        row[f"{key}_accuracy"] = c.get("stitched_accuracy")
        row[f"{key}_penalty"] = c.get("penalty")
        row[f"{key}_family"] = c.get("family")
        row[f"{key}_epochs"] = c.get("epochs")
        row[f"{key}_stop"] = c.get("stop")
        if key == "real":
            row["cka"] = c.get("cka")
            row["init_accuracy"] = c.get("init_accuracy")
    return [rows[i] for i in sorted(rows)]


def plot(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["layers"]
    x = range(len(rows))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label, style in (("real", "trained sender (seed 0)", "o-"),
                              ("random_sender", "random sender (control)", "s--")):  # fmt: skip
        ax.plot(x, [100 * (r[f"{key}_penalty"] or 0) for r in rows], style, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xticks=list(x), xticklabels=[r["layer"] for r in rows], xlabel="stitch layer",
           ylabel="penalty (points)", title="stitching penalty per layer")  # fmt: skip
    ax.legend()
    ax2.plot(x, [r["cka"] for r in rows], "o-", color="tab:green")
    ax2.set(xticks=list(x), xticklabels=[r["layer"] for r in rows], xlabel="layer",
            ylabel="linear CKA", ylim=(0, 1.05), title="CKA, same layer of both networks")  # fmt: skip
    fig.suptitle(f"{MODEL} seed 0 → seed 1, {result['params']['data']}")
    fig.tight_layout()
    path = out / "connectivity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def table(result: dict) -> str:
    b = result["baselines"]["main"]
    lines = [f"receiver accuracy {100 * b['receiver_accuracy']:.1f} %, "
             f"sender {100 * b['sender_accuracy']:.1f} %",
             f"{'layer':10} {'family':14} {'stitched %':>10} {'penalty':>8} "
             f"{'random-sender %':>15} {'penalty':>8} {'CKA':>5}"]  # fmt: skip
    for r in result["layers"]:
        lines.append(
            f"{r['layer']:10} {r['real_family'] or '-':14} {pct(r['real_accuracy']):>10} "
            f"{pct(r['real_penalty']):>8} {pct(r.get('random_sender_accuracy')):>15} "
            f"{pct(r.get('random_sender_penalty')):>8} {r['cka'] or float('nan'):5.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return study_main("connectivity", __doc__.splitlines()[0], run, plot, table, argv, options)


if __name__ == "__main__":
    main()
