"""What the `more-is-better` and `weak-labels` studies share: several senders, one receiver.

Both studies (Bansal et al. 2021, §5 and §6) train one receiver and a handful of senders that
differ from it in a single respect (more data, longer training, noisy or coarse labels), stitch
each sender into the receiver at every stage boundary (``diagonal=True``: sender cut *i* into
receiver cut *i*) and read the penalty and the linear CKA per layer. Only the list of senders and
the paper's claims differ, so the whole pipeline lives here and each ``run.py`` only declares
its plan. Everything goes through the public API: ``stitchcore.zoo.ensure_trained`` for the base
models, ``stitchcore.run_matrix`` for the stitches.

Two senders are always *references*: trained exactly like the receiver except for the seed (1
and 2). Stitch training itself moves accuracy a little (a few more optimisation steps on the
receiver's top, an imperfect fit between two seeds), so a sender's effect is best read against
the first reference at the same layer (``penalty_vs_reference``), and the gap between the two
references shows how far a penalty moves by chance alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import study_main as common_main

MODEL = "timm:resnet18"
#: The stem and the end of each residual stage of timm's resnet18 (``stitch cuts timm:resnet18``).
CUTS = ["act1", "layer1", "layer2", "layer3", "layer4"]


@dataclass(frozen=True)
class BaseModel:
    """One ResNet-18 to train (or reuse) in the zoo; ``key`` names it in results and figures."""

    key: str
    label: str
    train_size: int
    epochs: int
    seed: int = 1
    label_noise: float = 0.0
    coarse: bool = False


@dataclass(frozen=True)
class Scale:
    """How big a run is: data, model width and resolution, stitch training."""

    data: str
    width: float
    input_size: int
    stitch_epochs: int | None  # None: until converged (the engine's default)
    stitch_batch_size: int
    stitch_lr: float
    stitch_train_size: int


@dataclass(frozen=True)
class Plan:
    scale: Scale
    receiver: BaseModel
    senders: list[BaseModel]
    #: keys of the senders trained like the receiver but for the seed; penalties are read
    #: against the first, the spread between them shows how much a penalty moves by chance
    references: tuple[str, ...]


def study_main(
    study: str, doc: str, plan: Callable[[bool], Plan], paper: dict, argv: list[str] | None
) -> dict:
    """Parse ``[--mini] [--out DIR] [--zoo DIR] [--threads N]``, run, write, plot, print
    (_common.study_main with this pipeline)."""
    return common_main(
        study,
        doc.splitlines()[0],
        run=lambda out, zoo, mini, _log: {"paper": paper, **run_plan(plan(mini), out, zoo)},
        plot=lambda result, out: [plot(result, out / f"{study}-penalty.png")],
        table=table,
        argv=argv,
    )


def run_plan(plan: Plan, out: Path, zoo: Path) -> dict:
    """Train (or reuse) every base model, stitch each sender into the receiver, collect rows."""
    import stitchcore
    from stitchcore.zoo import ensure_trained

    s = plan.scale
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    t0 = time.perf_counter()
    models = {}
    for m in [plan.receiver, *plan.senders]:
        loaded, record = ensure_trained(
            MODEL, s.data, seed=m.seed, epochs=m.epochs, zoo=zoo, train_size=m.train_size,
            label_noise=m.label_noise, coarse=m.coarse, width=s.width, input_size=s.input_size,
            progress=False, log=log,
        )  # fmt: skip
        name = record["name"]
        models[m.key] = {
            **asdict(m),
            "spec": f"zoo:{zoo.resolve() / name}.json",  # any zoo directory, not only the default
            "name": name,
            "test_accuracy": record["test_accuracy"],  # on its own task (coarse: 3 classes)
            "batch_size": record["training"]["batch_size"],
            "seconds_per_epoch": record["seconds_per_epoch"],
        }
    t1 = time.perf_counter()
    stitch = stitchcore.StitchConfig(
        epochs=s.stitch_epochs, batch_size=s.stitch_batch_size, lr=s.stitch_lr
    )  # epochs None: each stitch until its validation accuracy/loss plateaus
    receiver = models[plan.receiver.key]
    senders = []
    for m in plan.senders:
        log(f"{m.key}: stitching {models[m.key]['name']} into {receiver['name']}")
        cfg = stitchcore.MatrixConfig(
            sender=models[m.key]["spec"], receiver=receiver["spec"], diagonal=True,
            sender_cuts=CUTS, receiver_cuts=CUTS, data=s.data, train_size=s.stitch_train_size,
            cka=True, stitch=stitch,
        )  # fmt: skip
        matrix = stitchcore.run_matrix(cfg, out / "matrices" / m.key, force=True, log=log)
        senders.append({**models[m.key], "layers": _rows(matrix), **_baselines(matrix)})
    ref = next(x for x in senders if x["key"] == plan.references[0])
    for x in senders:
        for row, ref_row in zip(x["layers"], ref["layers"]):
            both = row["penalty"] is not None and ref_row["penalty"] is not None
            row["penalty_vs_reference"] = row["penalty"] - ref_row["penalty"] if both else None
    return {
        "setup": {"model": MODEL, "cuts": CUTS, **asdict(s), "stitch": stitch.to_json()},
        "reference": plan.references[0],
        "references": list(plan.references),
        "receiver": receiver,
        "senders": senders,
        "timings": {
            "base_models_s": round(t1 - t0, 1),
            "matrices_s": round(time.perf_counter() - t1, 1),
        },  # fmt: skip
    }


def _rows(matrix: dict) -> list[dict]:
    """One row per stage boundary (the diagonal cells of the main variant), in cut order."""
    cells = sorted((c for c in matrix["cells"] if c["variant"] == "main"), key=lambda c: c["i"])
    keys = ("family", "init_accuracy", "stitched_accuracy", "receiver_accuracy", "penalty", "cka",
            "epochs", "stop")  # fmt: skip
    return [{"layer": c["sender_cut"], "status": c["status"], **{k: c.get(k) for k in keys}}
            for c in cells]  # fmt: skip


def _baselines(matrix: dict) -> dict:
    b = (matrix["baselines"] or {}).get("main") or {}
    return {
        "accuracy_on_receiver_task": b.get("sender_accuracy"),  # None when its head does not fit
        "matrix_cells_s": round(matrix["timings"]["cells_s"], 1),
    }


def plot(result: dict, path: Path) -> Path:
    """Penalty per layer (one line per sender, percentage points) beside the CKA per layer."""
    from matplotlib.figure import Figure

    layers = result["setup"]["cuts"]
    x = range(len(layers))
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    for s in result["senders"]:
        refs = result["references"]
        style = {"marker": "o"}
        if s["key"] in refs:
            grey = str(0.55 * refs.index(s["key"]) / max(1, len(refs) - 1))
            style = {"color": grey, "ls": "--", "marker": "s"}
        task = ", coarse task" if s["coarse"] else ""
        label = f"{s['label']} (own acc. {100 * s['test_accuracy']:.1f} %{task})"
        pen = [None if r["penalty"] is None else 100 * r["penalty"] for r in s["layers"]]
        ax.plot(x, pen, label=label, **style)
        ax2.plot(x, [r["cka"] for r in s["layers"]], label=s["label"], **style)
    ax.axhline(0, color="grey", lw=0.8)
    r = result["receiver"]
    ax.set(xticks=list(x), xticklabels=layers, xlabel="stitch point (end of)",
           ylabel="penalty = receiver − stitched (points)",
           title=f"penalty; receiver {r['label']}, {100 * r['test_accuracy']:.1f} %")  # fmt: skip
    ax.legend(fontsize=8)
    ax2.set(xticks=list(x), xticklabels=layers, xlabel="layer", ylabel="linear CKA",
            ylim=(0, 1.05), title="CKA, sender vs receiver at the same layer")  # fmt: skip
    s = result["setup"]
    fig.suptitle(
        f"{result['study']} ({result['mode']}): ResNet-18 ×{s['width']:g} width, {s['input_size']} px, "
        f"{s['data']}; stitch trained {_budget(s['stitch_epochs'])} on {s['stitch_train_size']} "
        "images",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _budget(epochs: int | None) -> str:
    return "until converged" if epochs is None else f"{epochs} epoch(s), not converged"


def table(result: dict):
    """Rows: senders; columns: layers; each cell ``penalty (Δ vs reference) · CKA``."""
    from rich.table import Table

    r = result["receiver"]
    grid = Table(
        title=f"{result['study']}: penalty in points (vs reference) · CKA; receiver "
        f"{r['label']} at {100 * r['test_accuracy']:.1f} %"
    )
    grid.add_column("sender")
    grid.add_column("own acc.", justify="right")
    for layer in result["setup"]["cuts"]:
        grid.add_column(layer, justify="right")
    for s in result["senders"]:
        cells = []
        for row in s["layers"]:
            if row["penalty"] is None:
                cells.append(row["status"])
                continue
            delta = row["penalty_vs_reference"]
            cka = "-" if row["cka"] is None else f"{row['cka']:.2f}"
            cells.append(f"{100 * row['penalty']:+.1f} ({100 * delta:+.1f}) · {cka}")
        grid.add_row(s["label"], f"{100 * s['test_accuracy']:.1f}", *cells)
    return grid
