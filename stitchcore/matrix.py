"""Stitching matrices: every sender cut × every receiver cut, with controls and CKA.

Work is organised so that the expensive parts happen once:
  - one sender pass per batch yields the activations at all sender cuts (an extractor), stored
    once (memory, spilling to disk, optionally fp16) and reused by every receiver cut and epoch;
  - the receiver's prefix runs once for a least-squares sample and the CKA subset;
  - cells sharing a receiver cut form a *group* trained together through one batched pass of the
    receiver's suffix (frozen: no weight gradients).
A group is the unit of work, of sharding (``--shard K/N``, torchrun ranks) and of resumption: each
finished cell is written atomically as soon as its group completes, and a re-run skips them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import plugins
from .cache import DEFAULT_BUDGET, ActivationStore
from .checkpoint import write_json_atomic
from .controls import randomized
from .cuts import Cut, Cutter
from .datasets import DataSplits, adapt
from .errors import StitchError
from .families import resolve_family
from .group import Member, evaluate_group, train_group
from .pair import Side
from .sources import LoadedModel
from .stitching import StitchConfig, head_fits, logits_of, scratch_state

SCHEMA = "stitchcore.matrix/1"
CONTROLS = ("random-sender", "random-receiver", "random-both")


@dataclass
class MatrixConfig:
    """Everything that determines a matrix's numbers (its hash guards a results directory)."""

    sender: str
    receiver: str
    sender_cuts: list[str] | str = "default"
    receiver_cuts: list[str] | str = "default"
    diagonal: bool = False
    data: str = "digits"
    train_size: int | None = None
    controls: list[str] = field(default_factory=list)
    cka: bool = True
    cka_samples: int = 1024
    fp16: bool = False
    stitch: StitchConfig = field(default_factory=StitchConfig)

    def __post_init__(self) -> None:
        bad = [c for c in self.controls if c not in CONTROLS]
        if bad:
            raise StitchError(f"unknown control {bad[0]!r}; choose from {', '.join(CONTROLS)}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["stitch"] = self.stitch.to_json()
        return out

    def digest(self) -> str:
        """Hash of what changes results (not of fp16 storage or sample counts for CKA)."""
        key = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def variants(self) -> list[str]:
        return ["main", *self.controls]


def cell_seed(base: int, variant: str, i: int, j: int) -> int:
    text = f"{base}/{variant}/{i}/{j}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------- results dir
class ResultsDir:
    """The on-disk state of a matrix: config, one JSON per finished cell, the assembled files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def prepare(self, cfg: MatrixConfig, force: bool) -> None:
        """Create, check writability, refuse a directory holding another configuration."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StitchError(
                f"cannot write to output directory {self.path}: {exc.strerror}"
            ) from exc
        cfg_file = self.path / "config.json"
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if old.get("digest") != cfg.digest():
                if not force:
                    raise StitchError(
                        f"{self.path} holds a matrix of a different configuration; use another "
                        "--out or --force to replace it"
                    )
                for f in self.path.glob("cells/*/*.json"):
                    f.unlink()
        write_json_atomic(cfg_file, {"digest": cfg.digest(), "config": cfg.to_json()})

    def cell_path(self, variant: str, i: int, j: int) -> Path:
        return self.path / "cells" / variant / f"{i}_{j}.json"

    def has_cell(self, variant: str, i: int, j: int) -> bool:
        return self.cell_path(variant, i, j).exists()

    def write_cell(self, cell: dict) -> None:
        p = self.cell_path(cell["variant"], cell["i"], cell["j"])
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p, cell)

    def write_json(self, name: str, data: dict) -> None:
        write_json_atomic(self.path / name, data)

    def read_json(self, name: str) -> dict | None:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else None

    def cells(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.path.glob("cells/*/*_*.json"))]


# ------------------------------------------------------------------------------- the engine
Log = Callable[[str], None]


@dataclass
class Models:
    sender: LoadedModel
    receiver: LoadedModel
    info: dict = field(default_factory=dict)


class Matrix:
    """Computes (its share of) a matrix into a results directory."""

    def __init__(
        self,
        cfg: MatrixConfig,
        out: str | Path,
        models: Models,
        data: DataSplits,
        *,
        shard: tuple[int, int] = (0, 1),
        cache_budget: int = DEFAULT_BUDGET,
        log: Log = lambda s: None,
        on_cell: Callable[[dict], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.cfg, self.models, self.data = cfg, models, data
        self.results = ResultsDir(out)
        self.shard = shard
        self.cache_budget = cache_budget
        self.log, self.on_cell, self.on_step = log, on_cell, on_step
        if cfg.stitch.family != "auto":
            plugins.get_family(cfg.stitch.family)  # unknown names fail before any work
        self.sides = {"sender": Side.of(models.sender), "receiver": Side.of(models.receiver)}
        for side in self.sides.values():
            side.cutter.fast_layout()  # the engine's cut modules in the fastest layout
        self.sender_cuts = self._cuts(self.sides["sender"].cutter, cfg.sender_cuts)
        self.receiver_cuts = self._cuts(self.sides["receiver"].cutter, cfg.receiver_cuts)
        self._random_sides: dict[str, Side] = {}
        self._acts: dict[str, dict] = {}
        self._baselines: dict[str, dict] = {}

    @staticmethod
    def _cuts(cutter: Cutter, which) -> list[Cut]:
        if which == "default":
            cuts = cutter.cuts()
        elif which == "all":
            cuts = cutter.cuts(all=True)
        else:
            cuts = [cutter.resolve(name) for name in which]
        if not cuts:
            raise StitchError(f"{cutter.label} has no valid cut to stitch at")
        return cuts

    # ---------------------------------------------------------------- plan
    def cells_of(self, j: int) -> list[int]:
        if self.cfg.diagonal:
            return [j] if j < len(self.sender_cuts) else []
        return list(range(len(self.sender_cuts)))

    def groups(self) -> list[tuple[str, int]]:
        """All (variant, receiver cut) groups in a fixed order; this shard's share of them."""
        every = [(v, j) for v in self.cfg.variants for j in range(len(self.receiver_cuts))]
        k, n = self.shard
        return every[k::n]

    def pending(self) -> list[tuple[str, int]]:
        return [
            (v, j)
            for v, j in self.groups()
            if any(not self.results.has_cell(v, i, j) for i in self.cells_of(j))
        ]

    def total_cells(self) -> int:
        return sum(len(self.cells_of(j)) for _, j in self.groups())

    # ---------------------------------------------------------------- sides per variant
    def side(self, role: str, variant: str) -> Side:
        """The real model, or its random control for this variant."""
        random = variant == "random-both" or variant == f"random-{role}"
        if not random:
            return self.sides[role]
        if role not in self._random_sides:
            real = self.sides[role]
            module = randomized(
                real.module, seed=self.cfg.stitch.seed + (1 if role == "receiver" else 0)
            )
            cutter = Cutter(module, real.cutter.example).fast_layout()
            cutter.hints = real.cutter.hints
            self._random_sides[role] = Side(cutter, real.input, f"{real.label} (random init)")
        return self._random_sides[role]

    def _views(self, side: Side, images: torch.Tensor) -> torch.Tensor:
        return adapt(images, side.input) if side.input is not None else images

    # ---------------------------------------------------------------- activations
    @torch.no_grad()
    def sender_acts(self, variant: str) -> dict:
        """Activations at every sender cut for train and test (one pass each), and the
        sender's own test accuracy. Shared by the variants that share the sender."""
        key = "random" if variant in ("random-sender", "random-both") else "real"
        if key in self._acts:
            return self._acts[key]
        side = self.side("sender", variant)
        cutter = side.cutter
        extractor = cutter.extractor(self.sender_cuts)
        out: dict = {"train": [], "test": []}
        t0 = time.perf_counter()
        for split in ("train", "test"):
            x, y = (
                (self.data.train_x, self.data.train_y)
                if split == "train"
                else (self.data.test_x, self.data.test_y)
            )
            stores = [
                ActivationStore(
                    len(y),
                    c.spec.shape,
                    fp16=self.cfg.fp16,
                    budget=self.cache_budget // max(1, len(self.sender_cuts)),
                )
                for c in self.sender_cuts
            ]
            for start in range(0, len(y), 256):
                xb = self._views(side, x[start : start + 256])
                acts = extractor(xb)
                acts = acts if isinstance(acts, tuple) else (acts,)
                for store, a in zip(stores, acts):
                    store.append(a)
            out[split] = stores
        out["accuracy"] = self._accuracy(side, self.data.test_x, self.data.test_y)
        out["time_s"] = time.perf_counter() - t0
        out["bytes"] = sum(s.nbytes for s in out["train"] + out["test"])
        out["on_disk"] = any(s.on_disk for s in out["train"] + out["test"])
        self._acts[key] = out
        return out

    @torch.no_grad()
    def _accuracy(self, side: Side, x: torch.Tensor, y: torch.Tensor) -> float | None:
        correct = 0
        for start in range(0, len(y), 256):
            logits = logits_of(side.module(self._views(side, x[start : start + 256])))
            if not head_fits(logits, self.data.num_classes):
                return None
            correct += (logits.argmax(1) == y[start : start + 256]).sum().item()
        return correct / len(y)

    @torch.no_grad()
    def receiver_sample(self, side: Side, cut: Cut, idx: torch.Tensor, split: str) -> torch.Tensor:
        """Receiver activations at ``cut`` for the given sample indices of a split."""
        x = self.data.train_x if split == "train" else self.data.test_x
        prefix, _ = side.cutter.split(cut)
        parts = [prefix(self._views(side, x[idx[s : s + 256]])) for s in range(0, len(idx), 256)]
        return torch.cat(parts)

    # ---------------------------------------------------------------- one group
    def run_group(self, variant: str, j: int) -> list[dict]:
        cfg = self.cfg.stitch
        r_side = self.side("receiver", variant)
        r_cut = self.receiver_cuts[j]
        acts = self.sender_acts(variant)
        prefix, suffix = r_side.cutter.split(r_cut)
        n_train = len(self.data.train_y)
        gen = torch.Generator().manual_seed(cfg.seed)
        sample_idx = torch.randperm(n_train, generator=gen)[: min(cfg.init_samples, n_train)]
        r_sample = None
        target = None
        if cfg.objective == "match":
            target = self.receiver_sample(r_side, r_cut, torch.arange(n_train), "train")
            r_sample = target[sample_idx]
        receiver_acc = self._baseline(variant)["receiver_accuracy"]
        t0 = time.perf_counter()
        members, cells = [], []
        for i in self.cells_of(j):
            s_cut = self.sender_cuts[i]
            cell = {
                "variant": variant, "i": i, "j": j, "sender_cut": s_cut.name,
                "receiver_cut": r_cut.name, "status": "ok", "reason": None, "family": None,
                "family_reason": None, "epochs": cfg.epochs, "receiver_accuracy": receiver_acc,
            }  # fmt: skip
            cells.append(cell)
            try:
                fam, why = resolve_family(cfg.family, s_cut.spec, r_cut.spec)
            except StitchError as exc:
                cell.update(status="refused", reason=str(exc))
                continue
            cell.update(family=fam.name, family_reason=why)
            try:
                torch.manual_seed(cell_seed(cfg.seed, variant, i, j))
                module = fam.build(s_cut.spec, r_cut.spec, **cfg.family_options)
                scratch = scratch_state(module, cfg)  # for --unsolved-epochs
                if cfg.init == "identity":
                    fam.init_identity(module)
                elif cfg.init == "lstsq" or not fam.trainable:
                    if r_sample is None:
                        r_sample = self.receiver_sample(r_side, r_cut, sample_idx, "train")
                    with torch.no_grad():
                        fam.init(module, acts["train"][i].take(sample_idx), r_sample)
            except (StitchError, RuntimeError, ValueError) as exc:
                cell.update(status="failed", reason=f"init: {exc}")
                continue
            members.append(Member((i, j), module, fam.trainable, acts["train"][i], scratch=scratch))
        self._train_and_score(members, cells, suffix, acts, target)
        if self.cfg.cka and variant == "main":
            self._cka_column(variant, j, r_side, r_cut, acts, cells)
        elapsed = time.perf_counter() - t0
        for cell in cells:
            cell["group_time_s"] = elapsed
            cell["time_s"] = elapsed / max(1, len(cells))
            self.results.write_cell(cell)
            if self.on_cell:
                self.on_cell(cell)
        return cells

    def _train_and_score(self, members, cells, suffix, acts, target) -> None:
        cfg = self.cfg.stitch
        by_key = {(c["i"], c["j"]): c for c in cells}
        test_y = self.data.test_y
        test_members = [
            Member(m.key, m.module, m.trainable, acts["test"][m.key[0]]) for m in members
        ]
        before = evaluate_group(test_members, suffix, test_y, self.data.num_classes)
        try:
            train_group(
                members, suffix, self.data.train_y, cfg, target=target, on_step=self.on_step
            )
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: record, go on
            for m in members:
                m.failed = f"training: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        for m, tm in zip(members, test_members):
            tm.failed = m.failed
        after = evaluate_group(test_members, suffix, test_y, self.data.num_classes)
        for m in members:
            cell = by_key[m.key]
            if m.failed:
                cell.update(status="failed", reason=m.failed)
                continue
            ev = after[m.key]
            ra = cell["receiver_accuracy"]
            if m.trainable:
                cell.update(epochs=m.epochs, fine_tuned=m.fine_tuned, from_scratch=m.from_scratch)
            cell.update(
                init_accuracy=before[m.key]["accuracy"],
                stitched_accuracy=ev["accuracy"],
                stitched_loss=ev["loss"],
                train_loss=m.history[-1] if m.history else None,
                penalty=(ra - ev["accuracy"])
                if ra is not None and ev["accuracy"] is not None
                else None,
            )

    @torch.no_grad()
    def _cka_column(self, variant, j, r_side, r_cut, acts, cells) -> None:
        from .similarity import MinibatchCKA

        n = min(self.cfg.cka_samples, len(self.data.test_y))
        idx = torch.arange(n)
        r_acts = self.receiver_sample(r_side, r_cut, idx, "test")
        rows = [c["i"] for c in cells]
        cka = MinibatchCKA(len(rows), 1)
        for start in range(0, n, 256):
            b = idx[start : start + 256]
            cka.update([acts["test"][i].take(b) for i in rows], [r_acts[b]])
        values = cka.result()
        for k, cell in enumerate(cells):
            v = float(values[k, 0])
            cell["cka"] = v if v == v else None

    def _baseline(self, variant: str) -> dict:
        if variant in self._baselines:
            return self._baselines[variant]
        s_acc = self.sender_acts(variant)["accuracy"]
        r_side = self.side("receiver", variant)
        base = {
            "sender_accuracy": s_acc,
            "receiver_accuracy": self._accuracy(r_side, self.data.test_x, self.data.test_y),
        }
        path = self.results.path / "cells" / variant / "baseline.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, base)
        self._baselines[variant] = base
        return base

    def run(self) -> None:
        for variant, j in self.pending():
            self.log(f"{variant}: stitching into receiver cut {self.receiver_cuts[j].name}")
            self.run_group(variant, j)
        for store_set in self._acts.values():
            for s in store_set["train"] + store_set["test"]:
                s.close()

    # ---------------------------------------------------------------- assembly
    def describe(self) -> dict:
        """Everything about this matrix except the cells (written once at the start)."""
        return {
            "models": self.models.info,
            "cuts": {
                "sender": [c.to_json() for c in self.sender_cuts],
                "receiver": [c.to_json() for c in self.receiver_cuts],
            },
            "data": {
                "name": self.cfg.data,
                "train_size": len(self.data.train_y),
                "test_size": len(self.data.test_y),
                "num_classes": self.data.num_classes,
            },
        }


def assemble(out: str | Path, timings: dict | None = None) -> dict:
    """Build matrix.json (+ csv and heatmap) from the cell files of a results directory."""
    rd = ResultsDir(out)
    cfg = rd.read_json("config.json")
    meta = rd.read_json("meta.json")
    if cfg is None or meta is None:
        raise StitchError(f"{rd.path} holds no matrix (config.json/meta.json missing)")
    variants = ["main", *cfg["config"]["controls"]]
    cells = [c for c in rd.cells() if c.get("variant") in variants]
    baselines = {}
    for v in variants:
        b = rd.read_json(f"cells/{v}/baseline.json")
        if b:
            baselines[v] = b
    n_s, n_r = len(meta["cuts"]["sender"]), len(meta["cuts"]["receiver"])
    cka_grid = [[None] * n_r for _ in range(n_s)]
    for c in cells:
        if c["variant"] == "main" and c.get("cka") is not None:
            cka_grid[c["i"]][c["j"]] = c["cka"]
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
        "timings": timings or (rd.read_json("matrix.json") or {}).get("timings", {}),
    }
    rd.write_json("matrix.json", results)
    from .plot import plot_matrix, write_csv

    write_csv(results, rd.path / "matrix.csv")
    plot_matrix(results, rd.path / "heatmap.png")
    return results


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("stitchcore", "torch", "timm", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
