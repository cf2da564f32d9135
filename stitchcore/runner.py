"""``run_matrix``: the one matrix runner, behind ``stitch matrix`` and the Python API.

Order of work, so that bad input never leaves anything behind and finished work is never lost:
validate (runtime, data, models, cuts, families and their options) → prepare the results
directory (refusing one of another configuration) → base models (trained first when they must
be, by rank 0 under torchrun) → this process's share of the groups, each written as it
finishes → assembly into matrix.json / matrix.csv / heatmap.png (and report.html when asked).

Under torchrun each rank takes one device (``cuda:LOCAL_RANK``, NCCL; gloo on CPUs), computes
only its share of the groups and only the sender activations those need; rank 0 assembles.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .basemodels import prepare_models
from .cache import DEFAULT_BUDGET, spill_directory, sweep_spill
from .cuts import Cutter, model_hints
from .datasets import DataOptions, DataSplits, data_notes, load_data
from .engine import ActivationCache, Engine, RunData, Side
from .errors import StitchError
from .loader import ReadOptions, raw_batches
from .matrix import Matrix, MatrixConfig
from .results import ResultsDir, assemble, provenance
from .runtime import Runtime, make_runtime
from .userdata import as_splits, describe_data, describe_model

__all__ = ["Distributed", "default_out", "run_matrix"]


class Distributed:
    """Rank and world size under torchrun (one process otherwise) and barriers between them."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self._dist = None

    @property
    def on(self) -> bool:
        return self.world > 1

    def init(self, runtime: Runtime) -> None:
        if not self.on:
            return
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if runtime.device.type == "cuda" else "gloo"
            kwargs = {"device_id": runtime.device} if backend == "nccl" else {}
            if backend == "nccl":
                torch.cuda.set_device(runtime.device)
            dist.init_process_group(backend, **kwargs)
        self._dist = dist

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def total(self, n: int, device) -> int:
        """``n`` summed over the ranks (``n`` itself in one process)."""
        if self._dist is None:
            return n
        import torch

        t = torch.tensor([n], dtype=torch.long, device=device)
        self._dist.all_reduce(t)
        return int(t.item())


def default_out(sender: Any, receiver: Any, data: Any) -> Path:
    import re

    def clean(x: Any) -> str:
        text = (
            x
            if isinstance(x, str)
            else (x.get("module", "model") if isinstance(x, dict) else "data")
        )
        return re.sub(
            r"[^A-Za-z0-9_.-]+", "-", text.rsplit(".", 1)[-1] if isinstance(x, dict) else text
        ).strip("-")

    return Path("results") / f"matrix-{clean(sender)}-{clean(receiver)}-{clean(data)}"


def run_matrix(
    cfg: MatrixConfig,
    out: str | Path | None = None,
    *,
    force: bool = False,
    base_epochs: int = 4,
    device: str = "auto",
    cache_gb: float = DEFAULT_BUDGET / 2**30,
    disk_cache_gb: float | None = None,
    cache_mode: str | None = None,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    report: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
    on_cell: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_pass: Callable[[str, int, int, float], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> dict | None:
    """Compute ``cfg`` into ``out`` and return the assembled matrix (the matrix.json schema);
    None on a rank or shard that does not assemble.

    ``cfg.sender``/``cfg.receiver``: spec strings (base models trained first when they must be,
    ``base_epochs`` epochs) or your own ``nn.Module``/LoadedModel; ``cfg.data``: a dataset name
    or your own data (DataSplits, or ``(train, test)`` — see :mod:`stitchcore.userdata`).
    ``device``/``cfg.precision``: where and how to compute.
    ``cache_gb``/``disk_cache_gb``/``cache_mode``: the activation cache (see
    :class:`~stitchcore.engine.ActivationCache`). ``shard=(k, n)``: compute share k of n
    (0-based), then :func:`~stitchcore.results.assemble`. ``on_start(todo, resumed)``,
    ``on_cell(cell)``, ``on_step(step, total)`` and ``on_pass(what, done, total, seconds)`` report
    progress.
    """
    start = time.perf_counter()
    for value in (cache_gb, disk_cache_gb):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise StitchError(f"--cache-gb and --disk-cache-gb must be finite and ≥ 0, got {value}")
    if base_epochs < 1:
        raise StitchError(f"--base-epochs must be ≥ 1, got {base_epochs}")
    dist = Distributed()
    if dist.on and shard and shard[1] > 1:
        raise StitchError("use either torchrun or --shard, not both")
    if dist.on and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{dist.local_rank}"
    runtime = make_runtime(device, cfg.precision)
    dist.init(runtime)
    shard = (dist.rank, dist.world) if dist.on else (shard or (0, 1))
    lead = dist.rank == 0
    say = log if lead else (lambda _m: None)

    # ---- data and models (nothing written yet but the zoo)
    if isinstance(cfg.data, str):
        options = DataOptions(
            train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.stitch.seed
        )
        splits, ready = load_data(cfg.data, options), False
    else:
        splits, ready = as_splits(cfg.data)
    for note in data_notes(splits):
        say(note)
    sender_obj, receiver_obj = cfg.sender, cfg.receiver
    cfg = replace(
        cfg,
        sender=describe_model(sender_obj),
        receiver=describe_model(receiver_obj),
        data=describe_data(cfg.data, splits),
    )
    models = prepare_models(sender_obj, receiver_obj, cfg.data if isinstance(cfg.data, str) else splits.name,
                            splits, base_epochs, say, input_size=cfg.input_size,
                            train_size=cfg.train_size, data_seed=cfg.stitch.seed, barrier=dist)  # fmt: skip
    example = _first_inputs(splits) if ready else None
    sides = {
        role: Side.of(model, example if _bare(model) else None)
        for role, model in (("sender", models.sender), ("receiver", models.receiver))
    }
    for side in sides.values():
        side.cutter.fast_layout().to(runtime.device)  # the engine's cut modules, fast, there
    rd = ResultsDir(out or default_out(cfg.sender, cfg.receiver, cfg.data), say)
    matrix = Matrix(
        cfg, rd, sides, shard=shard, log=say, on_cell=on_cell, device=runtime.device
    )  # validates cuts

    # ---- how it computes, checked before anything is written: the validation slice (in
    # Engine), and that each model reads the data (one batch: text into an image model, an
    # unreadable image file)
    run_data = RunData.for_models(splits, list(sides.values()), runtime, workers, ready=ready)
    cache = ActivationCache(
        runtime,
        memory_budget=int(cache_gb * 2**30),
        disk_budget=int((disk_cache_gb if disk_cache_gb is not None else _free_disk_gb(rd.path) * 0.5) * 2**30),
        spill_dir=spill_directory(rd.path),
        fp16=cfg.fp16,
        mode=cache_mode,
    )  # fmt: skip
    engine = Engine(run_data, cfg.stitch, runtime, cache, cka_samples=cfg.cka_samples,
                    diagnostics=cfg.diagnostics, log=say, on_step=on_step, on_pass=on_pass)  # fmt: skip
    if not ready:  # model-ready data was read already: the bare modules were traced on it
        import torch

        first = next(iter(engine.raw("train", torch.arange(min(2, len(splits.train_y))), 2)))
        for side in sides.values():
            side.view(first.inputs, run_data.ready, runtime)

    # ---- the results directory
    if lead:
        rd.prepare(cfg.to_json(), cfg.digest(), force)
        sweep_spill(rd.path)
        rd.write_json(
            "meta.json",
            {**matrix.describe(models.info, _data_json(cfg, splits)), "provenance": provenance(),
             "runtime": runtime.describe()},
        )  # fmt: skip
    dist.barrier()
    pending = matrix.pending()
    todo = matrix.cells_in(pending)
    resumed = matrix.total_cells() - todo
    if resumed:
        say(f"resuming: {resumed} finished cells kept in {rd.path}")
    if on_start:
        on_start(todo, resumed)

    # ---- compute
    needed = matrix.needed_sender_cuts(pending)
    per_sample = sum(
        math.prod(matrix.sender_cuts[i].spec.shape) * 4 for cuts in needed.values() for i in cuts
    )
    n_samples = len(splits.train_y) + len(splits.test_y)
    if pending:
        senders = [
            (matrix.sender_of(k), [matrix.sender_cuts[i] for i in cuts])
            for k, cuts in needed.items()
        ]
        cache.plan(per_sample, n_samples, say, stream_cost=lambda: engine.stream_cost(senders))
    t_cells = time.perf_counter()
    try:
        matrix.run(engine)
    finally:
        cache.close()
    cells_s = time.perf_counter() - t_cells
    computed = dist.total(matrix.computed, runtime.device)  # every rank's, not rank 0's alone
    if not lead or (shard[1] > 1 and not dist.on):
        return None
    timings = {
        "total_s": time.perf_counter() - start,
        "base_models_s": models.seconds,
        "cells_s": cells_s,
        "cells_computed": computed,
        "cells_resumed": resumed,
        "sender_pass_s": cache.pass_s,
        "cache": {"mode": cache.mode, "bytes": cache.bytes},
        "runtime": runtime.describe(),
        "ranks": dist.world,
    }
    results = assemble(rd.path, timings, log=say)
    if report:
        from .report import write_report

        write_report(results, rd.path / "report.html")
    return results


def _data_json(cfg: MatrixConfig, splits: DataSplits) -> dict:
    return {
        "name": cfg.data if isinstance(cfg.data, str) else splits.name,
        "source": cfg.data,
        "train_size": len(splits.train_y),
        "test_size": len(splits.test_y),
        "num_classes": splits.num_classes,
        "kind": splits.kind,
        **({"test_split": splits.meta["test_split"]} if splits.meta.get("test_split") else {}),
    }


def _bare(model: Any) -> bool:
    """A module nothing describes the input of (no LoadedModel, no plugin's hints): it is
    traced on the run's own model-ready data."""
    return not isinstance(model, Cutter) and model_hints(model).input is None


def _first_inputs(splits: DataSplits):
    """The first two training inputs of model-ready data, as a batch."""
    import torch

    n = min(2, len(splits.train_y))
    batch = next(iter(raw_batches(splits.train_x, splits.train_y, torch.arange(n), n,
                                  ReadOptions(ready=True))))  # fmt: skip
    return batch.inputs


def _free_disk_gb(path: Path) -> float:
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free / 2**30
    except OSError:
        return 0.0
