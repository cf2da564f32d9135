"""``stitch matrix`` (the main job) and ``stitch merge``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click

from ..basemodels import prepare_models
from ..cache import DEFAULT_BUDGET
from ..datasets import DataOptions, load_data
from ..errors import StitchError
from ..matrix import CONTROLS, Matrix, MatrixConfig, ResultsDir, assemble, distributed
from ..stitching import INITS, OBJECTIVES, StitchConfig
from .main import cli, err_console
from .options import family_option, parse_family_options
from .progress import progress_bar
from .tables import print_matrix


def _cut_list(value: str) -> list[str] | str:
    if value in ("default", "all"):
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def _shard(value: str | None) -> tuple[int, int]:
    if not value:
        return (0, 1)
    m = re.fullmatch(r"(\d+)/(\d+)", value)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise StitchError(f"--shard must look like K/N with 1 ≤ K ≤ N, got {value!r}")
    return (int(m.group(1)) - 1, int(m.group(2)))


def default_out(sender: str, receiver: str, data: str) -> Path:
    clean = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")  # noqa: E731
    return Path("results") / f"matrix-{clean(sender)}-{clean(receiver)}-{clean(data)}"


@cli.command("matrix")
@click.option("--sender", required=True, help="Sender model spec, e.g. timm:resnet18.")
@click.option("--receiver", required=True, help="Receiver model spec, e.g. timm:resnet34.")
@click.option(
    "--sender-cuts", default="default", show_default=True, help="Comma list, default or all."
)
@click.option(
    "--receiver-cuts", default="default", show_default=True, help="Comma list, default or all."
)
@click.option(
    "--diagonal", is_flag=True, help="Only cells whose sender and receiver cut index match."
)
@click.option("--family", default="auto", show_default=True)
@family_option
@click.option("--objective", type=click.Choice(OBJECTIVES), default="task", show_default=True)
@click.option("--init", "init", type=click.Choice(INITS), default="lstsq", show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True, help="Stitch training epochs.")
@click.option("--unsolved-epochs", type=int, default=None,
              help="At least N epochs for stitches that learn from scratch (random init, or a "
                   "least-squares init at chance, e.g. upsample_conv cells).")  # fmt: skip
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", default="digits", show_default=True, help="Dataset NAME[:VARIANT].")
@click.option("--train-size", type=int, default=None, help="Use N training images.")
@click.option("--controls", default="", help=f"Comma list of: {', '.join(CONTROLS)}.")
@click.option("--cka/--no-cka", default=True, show_default=True, help="Linear CKA per cell.")
@click.option("--fp16", is_flag=True, help="Cache sender activations in float16.")
@click.option("--cache-gb", type=float, default=DEFAULT_BUDGET / 2**30, show_default=True,
              help="Memory for cached activations before spilling to disk.")  # fmt: skip
@click.option("--base-epochs", type=int, default=4, show_default=True,
              help="Epochs when base models must be trained first (no local weights).")  # fmt: skip
@click.option("--out", "out", type=click.Path(file_okay=False), help="Results directory.")
@click.option("--force", is_flag=True, help="Replace a results directory of another configuration.")
@click.option(
    "--shard", default=None, help="Compute only share K of N (e.g. 2/8), then `stitch merge`."
)
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json to stdout at the end.")
def matrix_command(**opts) -> None:
    """Stitch every sender cut into every receiver cut and report the matrix.

    Writes matrix.json, matrix.csv and heatmap.png into --out (printed at the end); finished
    cells are kept, so re-running the same command resumes. Under torchrun each rank computes
    its share of the cells and rank 0 assembles the matrix.

    \b
    Examples:
      stitch matrix --sender timm:resnet18 --receiver timm:resnet34
      stitch matrix --sender zoo:resnet18-digits-s0-e4 --receiver zoo:resnet18-digits-s1-e4 \\
                    --diagonal --controls random-sender --epochs 2
      torchrun --nproc_per_node 2 -m stitchcore.cli matrix --sender ... --receiver ...
    """
    start = time.perf_counter()
    rank, world = distributed()
    shard = _shard(opts["shard"])
    if world > 1:
        if opts["shard"]:
            raise StitchError("use either torchrun or --shard, not both")
        shard = (rank, world)
    cfg = MatrixConfig(
        sender=opts["sender"],
        receiver=opts["receiver"],
        sender_cuts=_cut_list(opts["sender_cuts"]),
        receiver_cuts=_cut_list(opts["receiver_cuts"]),
        diagonal=opts["diagonal"],
        data=opts["data"],
        train_size=opts["train_size"],
        controls=[c.strip() for c in opts["controls"].split(",") if c.strip()],
        cka=opts["cka"],
        fp16=opts["fp16"],
        stitch=StitchConfig(
            family=opts["family"],
            objective=opts["objective"],
            init=opts["init"],
            epochs=opts["epochs"],
            unsolved_epochs=opts["unsolved_epochs"],
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            seed=opts["seed"],
            family_options=parse_family_options(opts["family_options"]),
        ),  # fmt: skip
    )
    out = Path(opts["out"]) if opts["out"] else default_out(cfg.sender, cfg.receiver, cfg.data)
    results = ResultsDir(out)
    dist = _Dist(world)
    if rank == 0:
        results.prepare(cfg, opts["force"])
    dist.barrier()
    log = (lambda s: err_console.print(f"[dim]{s}[/]")) if rank == 0 else (lambda s: None)
    splits = load_data(cfg.data, DataOptions(train_size=cfg.train_size, seed=cfg.stitch.seed))
    t_models = time.perf_counter()
    if rank != 0:
        dist.barrier()  # rank 0 trains (and caches) base models first
    models = prepare_models(cfg.sender, cfg.receiver, cfg.data, splits, opts["base_epochs"], log)
    if rank == 0:
        dist.barrier()
    base_s = time.perf_counter() - t_models
    matrix = Matrix(cfg, out, models, splits, shard=shard,
                    cache_budget=int(opts["cache_gb"] * 2**30), log=log)  # fmt: skip
    if rank == 0:
        results.write_json("meta.json", matrix.describe())
    pending = matrix.pending()
    todo = sum(len(matrix.cells_of(j)) for _, j in pending)
    done_before = matrix.total_cells() - todo
    if rank == 0 and done_before:
        log(f"resuming: {done_before} finished cells kept in {out}")
    t_cells = time.perf_counter()
    with progress_bar(not opts["as_json"] and rank == 0) as progress:
        task = progress.add_task("matrix cells", total=todo, info="")

        def on_cell(cell):
            acc = cell.get("stitched_accuracy")
            info = f"{cell['variant']} {cell['sender_cut']}→{cell['receiver_cut']}: " + (
                f"{100 * acc:.1f}%" if acc is not None else cell["status"]
            )
            progress.advance(task)
            progress.update(task, info=info)

        # a group trains all its cells at once: its steps show that a long group is moving
        steps = progress.add_task("  training steps", total=None, info="", visible=False)

        def on_step(step, total):
            progress.update(steps, completed=step, total=total, visible=step < total)

        matrix.on_cell, matrix.on_step = on_cell, on_step
        matrix.run()
    cells_s = time.perf_counter() - t_cells
    dist.barrier()
    if rank != 0:
        return
    timings = {"total_s": time.perf_counter() - start, "base_models_s": base_s,
               "cells_s": cells_s, "cells_computed": todo, "cells_resumed": done_before}  # fmt: skip
    final = assemble(out, timings) if shard[1] == 1 or world > 1 else None
    if final is None:
        err_console.print(
            f"shard {shard[0] + 1}/{shard[1]} done; run `stitch merge {out}` when all are"
        )
        return
    if opts["as_json"]:
        click.echo(json.dumps(final, indent=2))
    else:
        print_matrix(final)
    failed = [c for c in final["cells"] if c["status"] == "failed"]
    refused = [c for c in final["cells"] if c["status"] == "refused"]
    if refused:
        err_console.print(
            f"[yellow]{len(refused)} cells could not be stitched (reasons in matrix.json)"
        )
    if failed:
        err_console.print(f"[red]{len(failed)} cells failed (reasons in matrix.json)")
    err_console.print(f"results: {out}/matrix.json, matrix.csv, heatmap.png "
                      f"({timings['total_s']:.0f} s)")  # fmt: skip


@cli.command("merge")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json to stdout.")
def merge_command(directory: str, as_json: bool) -> None:
    """Assemble matrix.json, matrix.csv and heatmap.png from the cells in DIRECTORY (after
    separate `--shard K/N` runs).

    \b
    Example:
      stitch merge results/matrix-timm-resnet18-timm-resnet34-digits
    """
    final = assemble(directory)
    if as_json:
        click.echo(json.dumps(final, indent=2))
    else:
        print_matrix(final)
    expected = (
        len(final["cuts"]["sender"]) * len(final["cuts"]["receiver"]) * len(final["variants"])
    )
    if not final["config"].get("diagonal") and len(final["cells"]) < expected:
        err_console.print(f"[yellow]{expected - len(final['cells'])} cells are not computed yet")


class _Dist:
    """torch.distributed (gloo) barriers under torchrun; no-ops otherwise."""

    def __init__(self, world: int) -> None:
        self.on = world > 1
        if self.on:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self._dist = dist

    def barrier(self) -> None:
        if self.on:
            self._dist.barrier()
