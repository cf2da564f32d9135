"""``stitch pair``: train and evaluate one stitch (a group of one, as in a matrix)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..basemodels import at_size
from ..checkpoint import save_stitch
from ..datasets import DataOptions, data_notes, load_data
from ..engine import Side
from ..errors import StitchError
from ..pair import stitch_sides
from ..sources import load_model
from ..spec import check_input_size
from .main import cli, err_console
from .options import data_options, device_options, stitch_config, stitch_options
from .progress import progress_bar


def fmt(value, pct: bool = True) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if pct else f"{value:.4f}"
    return str(value)


def _check_save_dir(path: str) -> None:
    """Refuse an unwritable --save before any training."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StitchError(f"cannot save the stitch to {target}: {exc.strerror}") from exc


@cli.command("pair")
@click.option(
    "--sender", required=True, help="Sender model spec, e.g. zoo:timm-resnet18-digits-s0-e3."
)
@click.option("--sender-cut", required=True, help="Where to cut the sender (see `stitch cuts`).")
@click.option("--receiver", required=True, help="Receiver model spec.")
@click.option("--receiver-cut", required=True, help="Where to cut the receiver.")
@stitch_options
@data_options
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="Save the stitch here.")
def pair_command(**opts) -> None:  # fmt: skip
    """Train one stitch from SENDER at SENDER_CUT into RECEIVER at RECEIVER_CUT and report
    stitched accuracy, the models' own accuracies, the stitching penalty and the diagnostics.
    Trained exactly as the same cell of `stitch matrix` (same options, same defaults).

    \b
    Examples:
      stitch pair --sender timm:resnet18@random --sender-cut layer2 \\
                  --receiver timm:resnet18@random-1 --receiver-cut layer2 --epochs 1
      stitch pair ... --family conv1x1 --init random --epochs 10 --json --save out/stitch
    """
    cfg = stitch_config(opts)
    check_input_size(opts["input_size"])
    if opts["save_dir"]:
        _check_save_dir(opts["save_dir"])
    splits = load_data(
        opts["data"],
        DataOptions(train_size=opts["train_size"], test_size=opts["test_size"], seed=cfg.seed),
    )
    for note in data_notes(splits):
        err_console.print(f"[dim]{note}[/]", highlight=False)
    models = {}
    for role in ("sender", "receiver"):
        loaded = load_model(opts[role])
        models[role] = at_size(loaded, opts["input_size"]) if opts["input_size"] else loaded
    s_side, r_side = Side.of(models["sender"]), Side.of(models["receiver"])
    with progress_bar(not opts["as_json"]) as progress:
        task = progress.add_task("training stitch", total=None, info="")

        def on_step(step, total):
            progress.update(task, completed=step, total=total)

        result = stitch_sides(
            s_side, opts["sender_cut"], r_side, opts["receiver_cut"], cfg, splits,
            on_step=on_step, device=opts["device"], precision=opts["precision"],
        )  # fmt: skip
    err_console.print(f"[dim]{result.family_reason}[/]", highlight=False)
    report = {
        "sender": {"model": opts["sender"], **result.sender_cut.to_json()},
        "receiver": {"model": opts["receiver"], **result.receiver_cut.to_json()},
        "family": result.family,
        "data": opts["data"],
        "config": cfg.to_json(),
        "metrics": result.metrics,
        "history": result.history,
    }
    if opts["save_dir"]:
        path = save_stitch(
            opts["save_dir"], result, sender=opts["sender"], receiver=opts["receiver"],
            data=opts["data"],
        )  # fmt: skip
        report["saved"] = str(path)
        err_console.print(f"saved stitch to {path}")
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    m = result.metrics
    epochs = m.get("epochs")
    how = {"plateau": "converged", "cap": "hit the cap (not converged)",
           "fixed": "fixed epochs (not converged)"}.get(m.get("stop"), m.get("stop") or "")  # fmt: skip
    table = Table(title="stitch pair", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("sender", f"{opts['sender']} @ {result.sender_cut.name} ({result.sender_cut.spec.describe()})"),
        ("receiver", f"{opts['receiver']} @ {result.receiver_cut.name} ({result.receiver_cut.spec.describe()})"),
        ("family", result.family),
        ("objective / init", f"{cfg.objective} / {cfg.init}"),
        ("epochs", f"{epochs} ({how})" if epochs is not None else "–"),
        ("data", opts["data"]),
        ("accuracy after init", fmt(m.get("init_accuracy"))),
        ("stitched accuracy", fmt(m.get("stitched_accuracy"))),
        ("stitched loss", fmt(m.get("stitched_loss"), pct=False)),
        ("receiver accuracy", fmt(m.get("receiver_accuracy"))),
        ("sender accuracy", fmt(m.get("sender_accuracy"))),
        ("stitching penalty", fmt(m.get("penalty"))),
        ("agreement with receiver", fmt(m.get("agreement"))),
        ("match R²", fmt(m.get("match_r2"), pct=False)),
        ("effective rank (stitched / receiver)",
         f"{fmt(m.get('rank_stitched'), pct=False)} / {fmt(m.get('rank_receiver'), pct=False)}"),
        ("OOD score (1 = receiver's own)", fmt(m.get("ood_score"), pct=False)),
        ("time", f"{m['time_s']:.1f} s"),
    ]  # fmt: skip
    if m.get("match_mse") is not None:
        rows.insert(9, ("matching MSE", fmt(m["match_mse"], pct=False)))
    if m.get("warning"):
        rows.append(("warning", m["warning"]))
    for row in rows:
        table.add_row(*row)
    Console().print(table)


__all__ = ["pair_command"]
