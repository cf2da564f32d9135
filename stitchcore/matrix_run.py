"""``run_matrix``: a whole single-process matrix from Python, as ``stitch matrix`` computes it.

For research code and the examples: load the data, prepare (or train) the base models, compute
the cells that are not finished yet (a rerun resumes), assemble matrix.json / matrix.csv /
heatmap.png and return the assembled results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .basemodels import prepare_models
from .datasets import DataOptions, load_data
from .matrix import Matrix, MatrixConfig, ResultsDir, assemble


def run_matrix(
    cfg: MatrixConfig,
    out: str | Path,
    *,
    force: bool = False,
    base_epochs: int = 4,
    log: Callable[[str], None] = lambda _msg: None,
    on_cell: Callable[[dict], None] | None = None,
) -> dict:
    """Compute ``cfg`` into ``out`` and return the assembled matrix (the matrix.json schema).

    ``force`` replaces a results directory holding another configuration; ``base_epochs`` is
    how long base models given without weights are trained when they must be.
    """
    start = time.perf_counter()
    ResultsDir(out).prepare(cfg, force)
    splits = load_data(cfg.data, DataOptions(train_size=cfg.train_size, seed=cfg.stitch.seed))
    t_models = time.perf_counter()
    models = prepare_models(cfg.sender, cfg.receiver, cfg.data, splits, base_epochs, log)
    base_s = time.perf_counter() - t_models
    matrix = Matrix(cfg, out, models, splits, log=log, on_cell=on_cell)
    ResultsDir(out).write_json("meta.json", matrix.describe())
    pending = matrix.pending()
    todo = sum(len(matrix.cells_of(j)) for _, j in pending)
    t_cells = time.perf_counter()
    matrix.run()
    timings = {
        "total_s": time.perf_counter() - start,
        "base_models_s": base_s,
        "cells_s": time.perf_counter() - t_cells,
        "cells_computed": todo,
        "cells_resumed": matrix.total_cells() - todo,
    }
    return assemble(out, timings)


__all__ = ["run_matrix"]
