"""Stitching matrices: every sender cut × every receiver cut, with controls and CKA.

A :class:`Matrix` plans the cells of one configuration — variants (the real models and the
random controls), cuts, groups (all cells into one receiver cut), this process's share of them —
and computes its pending groups through the :class:`~stitchcore.engine.Engine`, writing each
finished cell into the :class:`~stitchcore.results.ResultsDir` the moment its group completes.
A group is the unit of work, of sharding (``--shard K/N``, torchrun ranks), of claims between
concurrent processes and of resumption.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import plugins
from .controls import randomized
from .cuts import Cut, Cutter
from .engine import Engine, GroupResult, Side
from .errors import StitchError
from .families import resolve_family
from .results import ResultsDir
from .spec import check_input_size
from .stitching import StitchConfig

__all__ = ["CONTROLS", "Matrix", "MatrixConfig", "Models"]

CONTROLS = ("random-sender", "random-receiver", "random-both")


@dataclass
class MatrixConfig:
    """Everything that determines a matrix's numbers (its digest guards a results directory and
    is carried by every cell). ``sender``/``receiver`` are spec strings, or descriptions of the
    user's own modules (see :func:`stitchcore.describe.describe_model`); ``data`` a dataset name
    or a description of the user's data."""

    sender: Any
    receiver: Any
    sender_cuts: list[str] | str = "default"
    receiver_cuts: list[str] | str = "default"
    diagonal: bool = False
    data: Any = "digits"
    train_size: int | None = None
    test_size: int | None = None
    input_size: int | None = None
    controls: list[str] = field(default_factory=list)
    cka: bool = True
    cka_samples: int = 1024
    diagnostics: bool = True
    fp16: bool = False
    precision: str = "fp32"
    stitch: StitchConfig = field(default_factory=StitchConfig)

    def __post_init__(self) -> None:
        bad = [c for c in self.controls if c not in CONTROLS]
        if bad:
            raise StitchError(f"unknown control {bad[0]!r}; choose from {', '.join(CONTROLS)}")
        twice = sorted({c for c in self.controls if self.controls.count(c) > 1})
        if twice:
            raise StitchError(f"--controls names {twice[0]!r} twice")
        for label, value in (("--train-size", self.train_size), ("--test-size", self.test_size)):
            if value is not None and value < 1:
                raise StitchError(f"{label} must be ≥ 1, got {value}")
        check_input_size(self.input_size)

    def to_json(self) -> dict:
        out = asdict(self)
        out["stitch"] = self.stitch.to_json()
        for key in ("test_size", "input_size"):  # only when set: older digests stay valid
            if out[key] is None:
                del out[key]
        if out["precision"] == "fp32":
            del out["precision"]
        if out["diagnostics"]:
            del out["diagnostics"]
        return out

    def digest(self) -> str:
        """Hash of what changes results."""
        key = json.dumps(self.to_json(), sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def variants(self) -> list[str]:
        return ["main", *self.controls]


@dataclass
class Models:
    """The two models of a matrix as loaded, and what to record about them."""

    sender: Any  # LoadedModel or nn.Module
    receiver: Any
    info: dict = field(default_factory=dict)
    seconds: float = 0.0  # spent loading or training them


class Matrix:
    """Plans and computes (its share of) a matrix into a results directory."""

    def __init__(
        self,
        cfg: MatrixConfig,
        results: ResultsDir,
        sides: dict[str, Side],
        *,
        shard: tuple[int, int] = (0, 1),
        log: Callable[[str], None] = lambda _m: None,
        on_cell: Callable[[dict], None] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.cfg, self.results, self.sides = cfg, results, sides
        self.device = device or torch.device("cpu")
        self.shard, self.log, self.on_cell = shard, log, on_cell
        self.digest = cfg.digest()
        if cfg.stitch.family != "auto":
            plugins.get_family(cfg.stitch.family)  # unknown names fail before any work
        self.sender_cuts = self._cuts(sides["sender"].cutter, cfg.sender_cuts)
        self.receiver_cuts = self._cuts(sides["receiver"].cutter, cfg.receiver_cuts)
        self.families = self._families()
        self._random: dict[str, Side] = {}
        self.baselines: dict[str, dict] = {}
        self.computed = 0  # cells this process computed (the rest were resumed or others')

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

    def _families(self) -> dict[tuple[int, int], tuple]:
        """The family of every cell, resolved (and its options checked by building it once)
        before anything is written: a bad ``--family-option`` is an error, not failed cells."""
        cfg = self.cfg.stitch
        out = {}
        checked = set()
        for j, r_cut in enumerate(self.receiver_cuts):
            for i in self.cells_of(j):
                s_cut = self.sender_cuts[i]
                try:
                    fam, why = resolve_family(cfg.family, s_cut.spec, r_cut.spec)
                except StitchError:
                    continue  # recorded as refused by the engine, with the reason
                out[(i, j)] = (fam, why)
                if fam.name in checked or not cfg.family_options:
                    continue
                try:
                    fam.build(s_cut.spec, r_cut.spec, **cfg.family_options)
                except (StitchError, ValueError, TypeError) as exc:
                    raise StitchError(
                        f"family {fam.name!r} refuses the options {cfg.family_options}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    ) from exc
                checked.add(fam.name)
        return out

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

    def done(self, variant: str, j: int) -> bool:
        return all(
            self.results.read_cell(variant, i, j, self.digest) is not None for i in self.cells_of(j)
        )

    def pending(self) -> list[tuple[str, int]]:
        return [(v, j) for v, j in self.groups() if not self.done(v, j)]

    def total_cells(self) -> int:
        return sum(len(self.cells_of(j)) for _, j in self.groups())

    def cells_in(self, groups: list[tuple[str, int]]) -> int:
        return sum(len(self.cells_of(j)) for _, j in groups)

    def sender_key(self, variant: str) -> str:
        return "random" if variant in ("random-sender", "random-both") else "real"

    def sender_of(self, key: str) -> Side:
        """The sender a :meth:`sender_key` names (the real model, or its random control)."""
        return self.side("sender", "random-sender" if key == "random" else "main")

    def needed_sender_cuts(self, groups: list[tuple[str, int]]) -> dict[str, list[int]]:
        """Per sender (real or random), the sender cuts the given groups stitch from: what this
        process must compute, and no more."""
        need: dict[str, set[int]] = {}
        for v, j in groups:
            need.setdefault(self.sender_key(v), set()).update(self.cells_of(j))
        return {k: sorted(v) for k, v in need.items()}

    # ---------------------------------------------------------------- sides per variant
    def side(self, role: str, variant: str) -> Side:
        """The real model, or its random control for this variant."""
        random = variant == "random-both" or variant == f"random-{role}"
        if not random:
            return self.sides[role]
        if role not in self._random:
            real = self.sides[role]
            module = randomized(
                real.module, seed=self.cfg.stitch.seed + (1 if role == "receiver" else 0)
            )
            cutter = Cutter(module, real.cutter.example).fast_layout().to(self.device)
            cutter.hints = real.cutter.hints
            self._random[role] = Side(
                cutter, real.input, f"{real.label} (random init)", real.preprocess, real.logits
            )
        return self._random[role]

    def baseline(self, engine: Engine, variant: str) -> dict:
        if variant not in self.baselines:
            base = {
                "sender_accuracy": engine.own_accuracy(self.side("sender", variant)),
                "receiver_accuracy": engine.own_accuracy(self.side("receiver", variant)),
            }
            self.results.write_json(f"cells/{variant}/baseline.json", base)
            self.baselines[variant] = base
        return self.baselines[variant]

    # ---------------------------------------------------------------- compute
    def run_group(self, engine: Engine, variant: str, j: int) -> list[dict]:
        s_side = self.side("sender", variant)
        r_side = self.side("receiver", variant)
        s_cuts = [(i, self.sender_cuts[i]) for i in self.cells_of(j)]
        key = self.sender_key(variant)
        engine.prepare_sender(key, s_side, s_cuts)
        receiver_acc = self.baseline(engine, variant)["receiver_accuracy"]
        results: list[GroupResult] = engine.run_group(
            variant, key, s_side, s_cuts, r_side, self.receiver_cuts[j],
            receiver_accuracy=receiver_acc,
            families={i: self.families[(i, j)] for i, _ in s_cuts if (i, j) in self.families},
            cka=self.cfg.cka and variant == "main",
        )  # fmt: skip
        cells = []
        for res in results:
            cell = {**res.cell, "j": j, "digest": self.digest}
            self.results.write_cell(cell)
            self.computed += 1
            cells.append(cell)
            if self.on_cell:
                self.on_cell(cell)
        return cells

    def run(self, engine: Engine) -> None:
        """Compute this process's pending groups. A group claimed by another live process is
        left to it; at the end, those are waited for and taken over if their holder died. A
        missing or damaged baseline of this process's variants is recomputed."""
        for variant in dict.fromkeys(v for v, _ in self.groups()):
            if self.results.read_baseline(variant) is None:
                self.baseline(engine, variant)
        deferred = []
        for variant, j in self.pending():
            claim = self.results.claim(variant, j)
            if not claim.acquire():
                deferred.append((variant, j))
                continue
            try:
                if not self.done(variant, j):  # another process may have just finished it
                    self.log(f"{variant}: stitching into receiver cut {self.receiver_cuts[j].name}")
                    self.run_group(engine, variant, j)
            finally:
                claim.release()
        for variant, j in deferred:
            self.log(
                f"{variant} → {self.receiver_cuts[j].name}: computed by another process; waiting"
            )
            claim = self.results.claim(variant, j)
            claim.acquire(wait=True)
            try:
                if not self.done(variant, j):
                    self.run_group(engine, variant, j)
            finally:
                claim.release()

    # ---------------------------------------------------------------- description
    def describe(self, models_info: dict, data: dict) -> dict:
        """Everything about this matrix except the cells (meta.json)."""
        return {
            "models": models_info,
            "cuts": {
                "sender": [c.to_json() for c in self.sender_cuts],
                "receiver": [c.to_json() for c in self.receiver_cuts],
            },
            "data": data,
        }
