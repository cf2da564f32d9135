"""A matrix's results directory: its layout, its integrity rules, and assembly into matrix.json.

Layout::

    config.json              the configuration and its digest
    meta.json                models, cuts (with specs), data: written once per run
    cells/VARIANT/I_J.json   one finished cell, written atomically when its group finishes
    cells/VARIANT/baseline.json   the models' own accuracies
    claims/VARIANT_J.lock    a group's claim (an flock held while it is computed)
    .spill/PID/              activation files of a running process (removed by the next run)
    matrix.json, matrix.csv, heatmap.png   assembled

Integrity: every cell carries the digest of the configuration it was computed with; a cell file
that is empty, truncated, of another configuration or missing fields is reported and recomputed,
never counted as finished; ``stitch merge`` refuses cells of another configuration. Concurrent
runs on one directory (two shells, a scheduler that starts a shard twice) share the work: a group
is computed by whichever process holds its claim, and the others wait for it or take it over if
its holder died (flock is released by the kernel when a process dies, even by SIGKILL).
"""

from __future__ import annotations

import fcntl
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from .errors import StitchError
from .fileio import DamagedFileError, read_json, sweep_temporaries, write_json
from .provenance import provenance, versions

__all__ = [
    "CELL_FIELDS",
    "SCHEMA",
    "GroupClaim",
    "ResultsDir",
    "assemble",
    "provenance",
    "versions",
]

SCHEMA = "stitchcore.matrix/1"  # cells gained fields (digest, diagnostics, convergence): additive
#: Fields every finished cell has (a cell file without them is damaged).
CELL_FIELDS = ("variant", "i", "j", "status", "digest")


class GroupClaim:
    """An exclusive claim on one group of a results directory (``fcntl.flock``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} {os.getpid()} {time.time():.0f}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ResultsDir:
    """The on-disk state of a matrix (see the module docstring)."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = lambda _m: None) -> None:
        self.path = Path(path)
        self.log = log

    # ------------------------------------------------------------------ configuration
    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StitchError(
                f"cannot write to output directory {self.path}: {exc.strerror}"
            ) from exc

    def stored_digest(self) -> str | None:
        """The digest in config.json (None when absent; a damaged config.json is reported and
        read as absent: the cells carry their own digests)."""
        try:
            data = read_json(self.path / "config.json")
        except DamagedFileError as exc:
            self.log(f"warning: {exc}; it will be rewritten")
            return None
        return data.get("digest") if isinstance(data, dict) else None

    def prepare(self, config: dict, digest: str, force: bool) -> None:
        """Refuse a directory of another configuration (unless ``force``: its cells are
        removed), then write config.json. Call only after everything else was validated, so a
        run that fails on bad input leaves nothing behind."""
        self.check_writable()
        old = self.stored_digest()
        if old is not None and old != digest:
            if not force:
                raise StitchError(
                    f"{self.path} holds a matrix of a different configuration; use another "
                    "--out or --force to replace it"
                )
            for f in self.path.glob("cells/*/*.json"):
                f.unlink()
            for name in ("matrix.json", "meta.json"):
                (self.path / name).unlink(missing_ok=True)
        write_json(self.path / "config.json", {"digest": digest, "config": config})
        for d in [self.path, *self.path.glob("cells/*")]:
            sweep_temporaries(d)
        self.drop_damaged(digest)

    def drop_damaged(self, digest: str) -> None:
        """Report and remove every damaged cell or baseline file, all of them now (a group's
        check stops at its first missing cell), so that each is named and recomputed."""
        for path in sorted(self.path.glob("cells/*/*.json")):
            name = path.stem
            if name == "baseline":
                self.read_baseline(path.parent.name)
            elif name.count("_") == 1 and name.replace("_", "").isdigit():
                i, j = map(int, name.split("_"))
                self.read_cell(path.parent.name, i, j, digest)

    # ------------------------------------------------------------------ cells
    def cell_path(self, variant: str, i: int, j: int) -> Path:
        return self.path / "cells" / variant / f"{i}_{j}.json"

    def read_cell(self, variant: str, i: int, j: int, digest: str) -> dict | None:
        """The finished cell, or None when it is missing or damaged (reported, then removed so
        it is recomputed) or of another configuration."""
        path = self.cell_path(variant, i, j)
        try:
            cell = read_json(path)
        except DamagedFileError as exc:
            self.log(f"warning: {exc}; recomputing that cell")
            path.unlink(missing_ok=True)
            return None
        if cell is None:
            return None
        if not isinstance(cell, dict) or any(k not in cell for k in CELL_FIELDS):
            self.log(f"warning: {path} is damaged (fields missing); recomputing that cell")
            path.unlink(missing_ok=True)
            return None
        if cell["digest"] != digest:
            return None
        return cell

    def write_cell(self, cell: dict) -> None:
        write_json(self.cell_path(cell["variant"], cell["i"], cell["j"]), cell)

    def baseline_path(self, variant: str) -> Path:
        return self.path / "cells" / variant / "baseline.json"

    def read_baseline(self, variant: str) -> dict | None:
        """The models' own accuracies for a variant, or None when missing or damaged (reported,
        then removed so that the next run recomputes it)."""
        path = self.baseline_path(variant)
        try:
            data = read_json(path)
        except DamagedFileError as exc:
            self.log(f"warning: {exc}; a run of the matrix recomputes it")
            path.unlink(missing_ok=True)
            return None
        if data is not None and not isinstance(data, dict):
            self.log(
                f"warning: {path} is damaged (not a JSON object); a run of the matrix recomputes it"
            )
            path.unlink(missing_ok=True)
            return None
        return data

    def claim(self, variant: str, j: int) -> GroupClaim:
        return GroupClaim(self.path / "claims" / f"{variant}_{j}.lock")

    def write_json(self, name: str, data: dict) -> None:
        write_json(self.path / name, data)

    def read_json(self, name: str) -> dict | None:
        """A JSON file of the directory (None when absent); a damaged one is a StitchError."""
        try:
            return read_json(self.path / name)
        except DamagedFileError as exc:
            raise StitchError(str(exc)) from exc

    def cells(self, digest: str | None = None, *, strict: bool = False) -> list[dict]:
        """Every readable cell file (damaged ones reported and skipped). With ``strict``, a cell
        of another configuration than ``digest`` is refused (``stitch merge``)."""
        out = []
        for p in sorted(self.path.glob("cells/*/*_*.json")):
            try:
                cell = read_json(p)
            except DamagedFileError as exc:
                self.log(f"warning: {exc}; left out (a rerun recomputes it)")
                continue
            if not isinstance(cell, dict) or any(k not in cell for k in CELL_FIELDS):
                self.log(f"warning: {p} is damaged (fields missing); left out")
                continue
            if digest is not None and cell["digest"] != digest:
                if strict:
                    raise StitchError(
                        f"{p} was computed with another configuration (digest "
                        f"{cell['digest']}, config.json has {digest}): merge only shards of one "
                        "command"
                    )
                continue
            out.append(cell)
        return out


def assemble(out: str | Path, timings: dict | None = None, *, strict: bool = False,
             log: Callable[[str], None] = lambda _m: None) -> dict:  # fmt: skip
    """Build matrix.json (+ csv and heatmap) from the cell files of a results directory."""
    rd = ResultsDir(out, log)
    cfg = rd.read_json("config.json")
    meta = rd.read_json("meta.json")
    if cfg is None or meta is None:
        raise StitchError(f"{rd.path} holds no matrix (config.json/meta.json missing)")
    variants = ["main", *cfg["config"]["controls"]]
    cells = [c for c in rd.cells(cfg["digest"], strict=strict) if c.get("variant") in variants]
    baselines = {v: b for v in variants if (b := rd.read_baseline(v))}
    n_s, n_r = len(meta["cuts"]["sender"]), len(meta["cuts"]["receiver"])
    cka_grid = [[None] * n_r for _ in range(n_s)]
    for c in cells:
        if c["variant"] == "main" and c.get("cka") is not None:
            cka_grid[c["i"]][c["j"]] = c["cka"]
    previous = {}
    try:
        previous = rd.read_json("matrix.json") or {}
    except StitchError:
        pass
    results = {
        "schema": SCHEMA,
        "config": cfg["config"],
        "config_digest": cfg["digest"],
        **meta,
        "variants": variants,
        "baselines": baselines,
        "cells": sorted(cells, key=lambda c: (variants.index(c["variant"]), c["i"], c["j"])),
        "cka": {"main": cka_grid} if cfg["config"].get("cka") else {},
        "versions": versions(),
        "timings": timings or previous.get("timings", {}),
    }
    rd.write_json("matrix.json", results)
    from .plot import plot_matrix, write_csv

    write_csv(results, rd.path / "matrix.csv")
    plot_matrix(results, rd.path / "heatmap.png")
    return results
