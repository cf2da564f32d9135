"""``stitch train`` (train a base model into the local zoo) and ``stitch zoo`` (list the zoo)."""

from __future__ import annotations

import json

import click
import torch
from rich.console import Console
from rich.table import Table

from ..errors import StitchError
from ..runtime import DEVICES, PRECISIONS
from ..training import HEADS, OPTIMIZERS
from ..zoo import damaged_entries, ensure_trained, list_entries, zoo_dir
from .main import cli

__all__ = ["train_command", "zoo_command"]


def _log(message: str) -> None:
    click.echo(message, err=True)


@cli.command("train")
@click.argument("model")
@click.option("--data", "data", required=True, help="Dataset NAME[:VARIANT], e.g. digits.")
@click.option("--seed", default=0, show_default=True, help="Initialisation and batch order.")
@click.option("--epochs", default=3, show_default=True, help="Training epochs (finetune head).")
@click.option("--train-size", type=int, help="Train on a random subset of N samples.")
@click.option("--test-size", type=int, help="Test on a random subset of N samples.")
@click.option("--label-noise", default=0.0, show_default=True, help="Fraction of random labels.")
@click.option("--coarse", is_flag=True, help="Train on the dataset's coarse (super-class) labels.")
@click.option("--width", default=1.0, show_default=True, help="Channel-width multiplier.")
@click.option("--input-size", type=int, help="Train at N×N pixels [default: 32 for small images].")
@click.option(
    "--seq-len",
    type=int,
    help="Text models: pad/truncate to N tokens [default: the source's, 128 for hf:].",
)
@click.option("--in-chans", default=3, show_default=True, help="Input channels (grey repeated).")
@click.option(
    "--head",
    type=click.Choice(HEADS),
    help="finetune: train all; probe: linear probe "
    "on frozen features [default: finetune for @random, probe otherwise].",
)
@click.option("--lr", type=float, help="Learning rate [default: Adam 1e-3, 3e-4 fine-tuning].")
@click.option("--batch-size", type=int, help="Batch size [default: 32..128 by train size].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True)
@click.option(
    "--data-seed", default=0, show_default=True, help="Seed of --train-size/--label-noise."
)
@click.option("--device", default="auto", show_default=True, help=f"Where to train: {DEVICES}.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Autocast while training (fp16 with a gradient scaler).",
)
@click.option("--zoo", "zoo", type=click.Path(file_okay=False), help="Zoo directory.")
@click.option("--force", is_flag=True, help="Train again even if the zoo has this model.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch [default: one per core]; 1 is faster on a shared machine.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the zoo record as JSON to stdout.")
def train_command(
    model: str,
    data: str,
    zoo: str | None,
    force: bool,
    no_progress: bool,
    threads: int | None,
    as_json: bool,
    device: str,
    **options,
) -> None:
    """Train MODEL (SOURCE:NAME[@WEIGHTS]) on a dataset and keep it in the local zoo.

    Without @WEIGHTS the model starts from @random (with --head probe: from the source's
    default weights). The same configuration trained twice is reused from the zoo; load the
    result anywhere as zoo:NAME.

    Text data (e.g. fortunes) trains a text model through its own tokenizer; a bare encoder
    gets a linear head on its mean over real tokens (last real token for a causal decoder).

    \b
    Examples:
      stitch train timm:resnet18 --data digits --epochs 3
      stitch train timm:resnet18 --data fashion-mnist --train-size 10000 --epochs 2
      stitch train timm:resnet18@random --data digits --width 0.5 --seed 1
      stitch train hf:all-MiniLM-L6-v2 --data fortunes --head probe --seq-len 64
      stitch train timm:resnet18 --data cifar10 --device cuda --precision bf16
    """
    if threads:
        torch.set_num_threads(threads)
    loaded, record = ensure_trained(
        model,
        data,
        zoo=zoo,
        force=force,
        progress=False if (no_progress or as_json) else None,
        log=_log,
        device=device,
        **options,
    )
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    per_epoch = record.get("seconds_per_epoch")
    timing = f", {per_epoch:.1f} s/epoch" if per_epoch else f", {record['seconds']:.1f} s"
    click.echo(f"{loaded.spec}  test accuracy {record['test_accuracy']:.4f}{timing}")


@cli.command("zoo")
@click.option("--zoo", "zoo", type=click.Path(file_okay=False), help="Zoo directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON to stdout.")
def zoo_command(zoo: str | None, as_json: bool) -> None:
    """List the models in the local zoo (trained by `stitch train`), usable as zoo:NAME.

    The zoo is --zoo DIR (which must exist), else $STITCHCORE_ZOO, else
    ~/.cache/stitchcore/zoo (empty until the first `stitch train`).

    \b
    Examples:
      stitch zoo
      stitch zoo --json
    """
    if zoo and not zoo_dir(zoo).is_dir():
        raise StitchError(f"--zoo {zoo}: no such directory (`stitch train --zoo DIR` creates one)")
    records, damaged = list_entries(zoo), damaged_entries(zoo)
    if records or not damaged or as_json:
        _list_zoo(records, zoo_dir(zoo), as_json)
    if damaged:  # after the listing: the good entries stay usable
        (path, why), more = damaged[0], len(damaged) - 1
        raise StitchError(
            f"zoo record {path} is damaged ({why}){f' and {more} more' if more else ''}: "
            "delete it, or retrain it with `stitch train`"
        )


def _list_zoo(records: list[dict], directory, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        _log(f"the zoo {directory} is empty; `stitch train MODEL --data D` adds models")
        return
    table = Table(title=f"zoo {directory}")
    # the name says model, data, seed and options; the table adds what the name cannot
    table.add_column("name", no_wrap=True)
    for col in ("head", "train n", "test acc", "s/epoch"):
        table.add_column(col, no_wrap=True, justify="right" if col != "head" else "left")
    for r in records:
        per_epoch = r.get("seconds_per_epoch")
        table.add_row(
            f"zoo:{r['name']}",
            r["head"]["kind"],
            str(r["data"]["train_samples"]),
            f"{r['test_accuracy']:.4f}",
            f"{per_epoch:.1f}" if per_epoch else "-",
        )
    console = Console()
    if not console.is_terminal:  # piped: never wrap or cut the names
        console.width = max(console.width, 200)
    console.print(table)
