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
Fashion-MNIST, whose two base models would cost another half hour of CPU.

    .venv/bin/python examples/cross-depth/run.py            # full study (~10 min on 2 cores)
    .venv/bin/python examples/cross-depth/run.py --mini     # miniature mode (CI)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pct, study_main  # noqa: E402

FULL = {"data": "digits", "base_train_size": None, "train_size": None, "base_epochs": 4,
        "stitch_epochs": 1}  # fmt: skip
MINI = {"data": "digits", "base_train_size": 200, "train_size": 200, "base_epochs": 1,
        "stitch_epochs": 1, "cuts": ["act1", "layer2", "layer4"]}  # fmt: skip
SENDER, RECEIVER = "timm:resnet18", "timm:resnet34"
VARIANTS = ("main", "random-sender", "random-receiver", "random-both")


def run(out: Path, zoo: Path, mini: bool, log) -> dict:
    import stitchcore
    from stitchcore.zoo import ensure_trained

    p = MINI if mini else FULL
    os.environ["STITCHCORE_ZOO"] = str(zoo)
    names = [
        ensure_trained(f"{model}@random", p["data"], seed=seed, epochs=p["base_epochs"], zoo=zoo,
                       train_size=p["base_train_size"], log=log)[0].spec
        for model, seed in ((SENDER, 0), (RECEIVER, 1))
    ]  # fmt: skip
    cfg = stitchcore.MatrixConfig(
        sender=names[0], receiver=names[1], data=p["data"], train_size=p["train_size"],
        sender_cuts=p.get("cuts", "default"), receiver_cuts=p.get("cuts", "default"),
        controls=list(VARIANTS[1:]), cka=True,
        stitch=stitchcore.StitchConfig(epochs=p["stitch_epochs"]),
    )  # fmt: skip
    matrix = stitchcore.run_matrix(cfg, out / "matrix", force=True, log=log)
    n_s, n_r = len(matrix["cuts"]["sender"]), len(matrix["cuts"]["receiver"])
    grids = {v: [[None] * n_r for _ in range(n_s)] for v in VARIANTS}
    for c in matrix["cells"]:
        grids[c["variant"]][c["i"]][c["j"]] = c.get("stitched_accuracy")
    return {
        "params": p, "sender": SENDER, "receiver": RECEIVER, "models": names,
        "sender_cuts": [c["name"] for c in matrix["cuts"]["sender"]],
        "receiver_cuts": [c["name"] for c in matrix["cuts"]["receiver"]],
        "accuracy": grids, "cka": matrix["cka"].get("main"), "baselines": matrix["baselines"],
        "triangles": triangles(grids), "matrix_timings": matrix["timings"],
    }  # fmt: skip


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
    for v in VARIANTS:
        lines.append(f"{v}: stitched accuracy % (rows {SENDER}, columns {RECEIVER})")
        lines.append(f"{'':10}" + "".join(f"{c:>9}" for c in result["receiver_cuts"]))
        for name, row in zip(result["sender_cuts"], result["accuracy"][v]):
            lines.append(f"{name:10}" + "".join(f"{pct(a):>9}" for a in row))
    lines.append(f"{'variant':16} {'lower (sender deeper)':>22} {'diagonal':>9} {'upper':>7}")
    for v, t in result["triangles"].items():
        lines.append(f"{v:16} {pct(t['lower']):>22} {pct(t['diagonal']):>9} {pct(t['upper']):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return study_main("cross-depth", __doc__.splitlines()[0], run, plot, table, argv)


if __name__ == "__main__":
    main()
