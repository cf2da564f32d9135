"""``stitch pair``: train and evaluate one stitch."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..checkpoint import save_stitch
from ..datasets import DataOptions, load_data
from ..pair import Side, stitch_sides
from ..sources import load_model
from ..stitching import INITS, OBJECTIVES, StitchConfig
from .main import cli, err_console
from .options import family_option, parse_family_options
from .progress import progress_bar


def fmt(value, pct: bool = True) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if pct else f"{value:.4f}"
    return str(value)


@cli.command("pair")
@click.option(
    "--sender", required=True, help="Sender model spec, e.g. zoo:timm-resnet18-digits-s0-e3."
)
@click.option("--sender-cut", required=True, help="Where to cut the sender (see `stitch cuts`).")
@click.option("--receiver", required=True, help="Receiver model spec.")
@click.option("--receiver-cut", required=True, help="Where to cut the receiver.")
@click.option("--family", default="auto", show_default=True, help="Stitch family, or auto.")
@family_option
@click.option("--objective", type=click.Choice(OBJECTIVES), default="task", show_default=True)
@click.option("--init", "init", type=click.Choice(INITS), default="lstsq", show_default=True)
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", default="digits", show_default=True, help="Dataset NAME[:VARIANT].")
@click.option("--train-size", type=int, default=None, help="Use N training images.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="Save the stitch here.")
def pair_command(
    sender, sender_cut, receiver, receiver_cut, family, family_options, objective, init, epochs,
    batch_size, lr, seed, data, train_size, as_json, save_dir,
) -> None:  # fmt: skip
    """Train one stitch from SENDER at SENDER_CUT into RECEIVER at RECEIVER_CUT and report
    stitched accuracy, the models' own accuracies and the stitching penalty.

    \b
    Examples:
      stitch pair --sender timm:resnet18@random --sender-cut layer2 \\
                  --receiver timm:resnet18@random-1 --receiver-cut layer2 --epochs 1
      stitch pair ... --family conv1x1 --init random --epochs 10 --json --save out/stitch
    """
    cfg = StitchConfig(
        family=family, objective=objective, init=init, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, family_options=parse_family_options(family_options),
    )  # fmt: skip
    splits = load_data(data, DataOptions(train_size=train_size, seed=seed))
    s_side = Side.of(load_model(sender))
    r_side = Side.of(load_model(receiver))
    with progress_bar(not as_json) as progress:
        task = progress.add_task("training stitch", total=None, info="")

        def on_step(step, total, loss):
            progress.update(task, completed=step, total=total, info=f"loss {loss:.4f}")

        result = stitch_sides(s_side, sender_cut, r_side, receiver_cut, cfg, splits, None, on_step)
    err_console.print(f"[dim]{result.family_reason}[/]")
    report = {
        "sender": {"model": sender, **result.sender_cut.to_json()},
        "receiver": {"model": receiver, **result.receiver_cut.to_json()},
        "family": result.family,
        "data": data,
        "config": cfg.to_json(),
        "metrics": result.metrics,
        "history": result.history,
    }
    if save_dir:
        path = save_stitch(save_dir, result, sender=sender, receiver=receiver, data=data)
        report["saved"] = str(path)
        err_console.print(f"saved stitch to {path}")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    m = result.metrics
    table = Table(title="stitch pair", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [
        ("sender", f"{sender} @ {result.sender_cut.name} ({result.sender_cut.spec.describe()})"),
        (
            "receiver",
            f"{receiver} @ {result.receiver_cut.name} ({result.receiver_cut.spec.describe()})",
        ),
        ("family", result.family),
        ("objective / init / epochs", f"{objective} / {init} / {epochs}"),
        ("data", data),
        ("accuracy after init", fmt(m.get("init_accuracy"))),
        ("stitched accuracy", fmt(m.get("stitched_accuracy"))),
        ("stitched loss", fmt(m.get("stitched_loss"), pct=False)),
        ("receiver accuracy", fmt(m.get("receiver_accuracy"))),
        ("sender accuracy", fmt(m.get("sender_accuracy"))),
        ("stitching penalty", fmt(m.get("penalty"))),
        ("time", f"{m['time_s']:.1f} s"),
    ]
    if "match_mse" in m:
        rows.insert(8, ("matching MSE", fmt(m["match_mse"], pct=False)))
    for row in rows:
        table.add_row(*row)
    Console().print(table)
