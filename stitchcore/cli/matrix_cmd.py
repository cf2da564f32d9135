"""``stitch matrix`` (the main job) and ``stitch merge``: thin wrappers of ``run_matrix`` and
``assemble``."""

from __future__ import annotations

import json
import math
import re

import click

from .. import plugins
from ..cache import DEFAULT_BUDGET
from ..errors import StitchError
from ..matrix import CONTROLS, MatrixConfig
from ..results import assemble
from ..runner import default_out, run_matrix
from .main import cli, err_console
from .options import data_options, device_options, stitch_config, stitch_options
from .progress import progress_bar
from .tables import print_matrix


def _cut_list(value: str) -> list[str] | str:
    if value in ("default", "all"):
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", value)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise StitchError(f"--shard must look like K/N with 1 ≤ K ≤ N, got {value!r}")
    return (int(m.group(1)) - 1, int(m.group(2)))


def _controls(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]  # MatrixConfig checks them


def _check(opts: dict) -> None:
    """What needs neither data nor models, checked before either is loaded."""
    for name in ("cache_gb", "disk_cache_gb"):
        value = opts[name]
        if value is not None and not (math.isfinite(value) and value >= 0):
            flag = "--" + name.replace("_", "-")
            raise StitchError(f"{flag} must be a finite number ≥ 0, got {value}")
    if opts["out"] is not None and not opts["out"].strip():
        raise StitchError("--out must name a directory, got an empty string")
    if opts["family"] != "auto":
        plugins.get_family(opts["family"])  # an unknown name, before any model is loaded


def _summary(final: dict) -> None:
    cells = final["cells"]
    for status, colour in (("refused", "yellow"), ("failed", "red")):
        bad = [c for c in cells if c["status"] == status]
        if bad:
            what = "could not be stitched" if status == "refused" else "failed"
            err_console.print(f"[{colour}]{len(bad)} cells {what} (reasons in matrix.json)")
    capped = [c for c in cells if c.get("converged") is False]
    if capped:
        err_console.print(
            f"[yellow]{len(capped)} cells hit the epoch cap before converging (marked ‡)"
        )
    warned = [c for c in cells if c.get("warning")]
    if warned:
        err_console.print(f"[yellow]{len(warned)} cells carry a warning (see matrix.json)")


@cli.command("matrix")
@click.option("--sender", required=True, help="Sender model spec, e.g. timm:resnet18.")
@click.option("--receiver", required=True, help="Receiver model spec, e.g. timm:resnet34.")
@click.option("--sender-cuts", default="default", show_default=True,
              help="Comma list, default or all.")  # fmt: skip
@click.option("--receiver-cuts", default="default", show_default=True,
              help="Comma list, default or all.")  # fmt: skip
@click.option("--diagonal", is_flag=True,
              help="Only cells whose sender and receiver cut index match.")  # fmt: skip
@stitch_options
@data_options
@device_options
@click.option("--controls", default="", help=f"Comma list of: {', '.join(CONTROLS)}.")
@click.option("--cka/--no-cka", default=True, show_default=True, help="Linear CKA per cell.")
@click.option("--diagnostics/--no-diagnostics", default=True, show_default=True,
              help="Agreement, match R², effective ranks, OOD score per cell.")  # fmt: skip
@click.option("--fp16", is_flag=True, help="Cache sender activations in float16.")
@click.option(
    "--cache",
    "cache_mode",
    type=click.Choice(["auto", "memory", "disk", "stream"]),
    default="auto",
    show_default=True,
    help="Keep sender activations (memory/disk) or recompute them per batch (stream).",
)
@click.option(
    "--cache-gb",
    type=float,
    default=DEFAULT_BUDGET / 2**30,
    show_default=True,
    help="Memory for cached activations.",
)
@click.option(
    "--disk-cache-gb",
    type=float,
    default=None,
    help="Disk for cached activations (16-bit) [default: half the free space].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader workers for datasets read from files [default: cores − 1, ≤ 8].",
)
@click.option(
    "--base-epochs",
    type=int,
    default=4,
    show_default=True,
    help="Epochs when base models must be trained first (no local weights).",
)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Results directory.")
@click.option("--force", is_flag=True, help="Replace a results directory of another configuration.")
@click.option(
    "--shard", default=None, help="Compute only share K of N (e.g. 2/8), then `stitch merge`."
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Also write report.html (see `stitch report`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json to stdout at the end.")
def matrix_command(**opts) -> None:  # fmt: skip
    """Stitch every sender cut into every receiver cut and report the matrix.

    Each cell trains until its validation loss plateaus (held out of the training split;
    --max-epochs caps it; --epochs N trains exactly N, reported as not converged). Writes
    matrix.json, matrix.csv and heatmap.png into --out (printed at the end); finished cells are
    kept, so re-running the same command resumes. Under torchrun each rank computes its share
    of the cells on its own device and rank 0 assembles the matrix.

    \b
    Examples:
      stitch matrix --sender timm:resnet18 --receiver timm:resnet34
      stitch matrix --sender zoo:resnet18-digits-s0-e4 --receiver zoo:resnet18-digits-s1-e4 \\
                    --diagonal --controls random-sender --epochs 2
      stitch matrix --sender timm:resnet50 --receiver timm:vit_base_patch16_224 \\
                    --data imagefolder:/data/imagenet --device cuda --precision bf16
      torchrun --nproc_per_node 2 -m stitchcore.cli matrix --sender ... --receiver ...
    """
    _check(opts)
    cfg = MatrixConfig(
        sender=opts["sender"],
        receiver=opts["receiver"],
        sender_cuts=_cut_list(opts["sender_cuts"]),
        receiver_cuts=_cut_list(opts["receiver_cuts"]),
        diagonal=opts["diagonal"],
        data=opts["data"],
        train_size=opts["train_size"],
        test_size=opts["test_size"],
        input_size=opts["input_size"],
        controls=_controls(opts["controls"]),
        cka=opts["cka"],
        diagnostics=opts["diagnostics"],
        fp16=opts["fp16"],
        precision=opts["precision"],
        stitch=stitch_config(opts),
    )
    log = lambda s: err_console.print(f"[dim]{s}[/]", highlight=False)  # noqa: E731
    with progress_bar(not opts["as_json"]) as progress:
        cells = progress.add_task("matrix cells", total=None, info="")
        steps = progress.add_task("  training steps", total=None, info="", visible=False)
        passes = progress.add_task("  data pass", total=None, info="", visible=False)

        def on_start(todo, resumed):
            progress.update(cells, total=todo)

        def on_cell(cell):
            acc = cell.get("stitched_accuracy")
            info = f"{cell['variant']} {cell['sender_cut']}→{cell['receiver_cut']}: " + (
                f"{100 * acc:.1f}%" if acc is not None else cell["status"]
            )
            progress.update(cells, advance=1, info=info)

        def on_step(step, total):  # a group trains all its cells at once: show it moving
            progress.update(steps, completed=step, total=total, visible=step < total)

        def on_pass(what, done, total, seconds):
            rate = f"{done / seconds:.0f} samples/s" if seconds > 0 else ""
            progress.update(passes, description=f"  {what}", completed=done, total=total,
                            info=rate, visible=done < total)  # fmt: skip

        final = run_matrix(
            cfg, opts["out"], force=opts["force"], base_epochs=opts["base_epochs"],
            device=opts["device"], cache_gb=opts["cache_gb"],
            disk_cache_gb=opts["disk_cache_gb"],
            cache_mode=None if opts["cache_mode"] == "auto" else opts["cache_mode"],
            workers=opts["workers"], shard=_shard(opts["shard"]), report=opts["report"],
            log=log, on_cell=on_cell, on_step=on_step, on_pass=on_pass, on_start=on_start,
        )  # fmt: skip
    if final is None:
        shard = _shard(opts["shard"])
        if shard:
            err_console.print(
                f"shard {shard[0] + 1}/{shard[1]} done; run `stitch merge DIR` when all are"
            )
        return
    if opts["as_json"]:
        click.echo(json.dumps(final, indent=2))
    else:
        print_matrix(final)
    _summary(final)
    out = opts["out"] or default_out(cfg.sender, cfg.receiver, cfg.data)
    files = "matrix.json, matrix.csv, heatmap.png" + (", report.html" if opts["report"] else "")
    err_console.print(f"results: {out}/{files} ({final['timings']['total_s']:.0f} s)")


@cli.command("merge")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print matrix.json to stdout.")
def merge_command(directory: str, as_json: bool) -> None:
    """Assemble matrix.json, matrix.csv and heatmap.png from the cells in DIRECTORY (after
    separate `--shard K/N` runs). Cells computed with another configuration are refused.

    \b
    Example:
      stitch merge results/matrix-timm-resnet18-timm-resnet34-digits
    """
    log = lambda s: err_console.print(f"[dim]{s}[/]", highlight=False)  # noqa: E731
    final = assemble(directory, strict=True, log=log)
    if as_json:
        click.echo(json.dumps(final, indent=2))
    else:
        print_matrix(final)
    n_s, n_r = len(final["cuts"]["sender"]), len(final["cuts"]["receiver"])
    expected = (min(n_s, n_r) if final["config"].get("diagonal") else n_s * n_r) * len(
        final["variants"]
    )
    if len(final["cells"]) < expected:
        err_console.print(f"[yellow]{expected - len(final['cells'])} cells are not computed yet")


__all__ = ["matrix_command", "merge_command"]
