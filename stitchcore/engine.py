"""The engine: stitches from one sender into one receiver cut, trained and measured together.

Everything that computes a stitch goes through :class:`Engine` — ``stitchcore.stitch`` (a group
of one), ``stitch pair`` and every group of a matrix — so a pair and a matrix cell on the same
cuts, init, seed and epochs give the same numbers, and a device, a data source or a diagnostic
is added here once.

Where the time goes and how it is kept down (see docs/scale.md):
  - sender activations at all the cuts a run needs come from one sender pass per batch and are
    either *cached* (device or host memory, or 16-bit files on disk under the run's spill
    directory, within the budgets) and read back every epoch, or *streamed* (the sender prefix
    runs again for each batch and feeds every stitch of the group), chosen per run by what fits
    (:class:`ActivationCache`);
  - the receiver's suffix runs frozen, once per batch for the whole group, with no weight
    gradients (:mod:`stitchcore.trainer`);
  - the receiver's prefix runs only where it must: a least-squares sample, match targets, the
    diagnostics and CKA on the test split.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cuts import Cut, Cutter
from .datasets import DataSplits, adapt, input_kind
from .diagnostics import pool_channels
from .errors import StitchError
from .families import StitchFamily, resolve_family
from .feeds import ActivationCache, GroupFeed
from .loader import RawBatch, ReadOptions, default_workers, raw_batches
from .runtime import Runtime
from .sources import LoadedModel
from .spec import InputSpec
from .stitching import (
    FrozenGuard,
    FrozenModelError,
    StitchConfig,
    head_fits,
    initialise,
    logits_selector,
    scratch_state,
)
from .trainer import (
    Member,
    evaluate_members,
    gaussian_of,
    measurement_warning,
    new_diagnostics,
    train_members,
)

__all__ = ["ActivationCache", "Engine", "GroupResult", "RunData", "Side", "cell_seed"]

EVAL_BATCH = 256


def cell_seed(base: int, variant: str, sender_cut: str, receiver_cut: str) -> int:
    """The seed a stitch is built with: from the run's seed, the variant and the two cut names,
    so the same stitch gets the same seed in a pair and in any matrix that holds it."""
    text = f"{base}/{variant}/{sender_cut}/{receiver_cut}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------ sides
@dataclass
class Side:
    """A model as one side of a stitch: its cutter, how a raw batch becomes its input (image
    adaptation to its input spec, or its own tokenizer for text), and how its logits are read."""

    cutter: Cutter
    input: InputSpec | None
    label: str
    preprocess: Callable | None = None
    logits: Callable = field(default_factory=logits_selector)

    @classmethod
    def of(
        cls,
        model: nn.Module | LoadedModel | Cutter,
        example_input=None,
        *,
        logits: str | int | Callable | None = None,
        preprocess: Callable | None = None,
    ) -> Side:
        cutter = model if isinstance(model, Cutter) else Cutter(model, example_input)
        loaded = cutter.loaded
        if preprocess is None and loaded is not None:
            preprocess = loaded.preprocess
        if logits is None and loaded is not None:
            logits = loaded.logits
        return cls(cutter, cutter.hints.input, cutter.label, preprocess, logits_selector(logits))

    @property
    def module(self) -> nn.Module:
        return self.cutter.module

    def view(self, raw: Any, ready: bool, runtime: Runtime):
        """This model's input for a raw batch, on the run's device."""
        if ready:
            return runtime.to(raw)
        if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], str):
            if self.preprocess is None:
                raise StitchError(
                    f"{self.label} has no tokenizer for text data (pass preprocess=, or load it "
                    "from a source that provides one, e.g. hf:)"
                )
            return runtime.to(self.preprocess(list(raw)))
        if self.input is None:
            raise StitchError(f"{self.label} has no input spec to adapt dataset images to")
        if self.input.kind != "image":
            raise StitchError(f"{self.label} takes {self.input.kind}, and the data holds images")
        return adapt(runtime.to(raw), self.input)


# ------------------------------------------------------------------------------------ data
@dataclass
class RunData:
    """The data of a run: raw splits (or model-ready batches: ``ready``), how lazy sources are
    read, and the validation slice held out of the training split for convergence."""

    splits: DataSplits
    ready: bool = False
    read: ReadOptions = field(default_factory=ReadOptions)

    def split(self, name: str) -> tuple[Any, torch.Tensor]:
        s = self.splits
        return (s.train_x, s.train_y) if name == "train" else (s.test_x, s.test_y)

    def size(self, name: str) -> int:
        return len(self.split(name)[1])

    def fit_val(self, cfg: StitchConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(training indices, validation indices): all for fixed epochs; for convergence a
        fixed random ``val_fraction`` of the training split (at least 32 samples) held out."""
        n = self.size("train")
        if not cfg.converges:
            return torch.arange(n), None
        k = max(32, int(round(cfg.val_fraction * n)))
        if n - k < 2 * cfg.batch_size // 4 or k >= n:
            raise StitchError(
                f"{n} training samples are too few to hold out a validation slice for "
                "convergence; pass a fixed --epochs"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))
        return perm[k:].sort().values, perm[:k].sort().values

    @classmethod
    def for_models(
        cls,
        splits: DataSplits,
        sides: list[Side],
        runtime: Runtime,
        workers: int | None = None,
        *,
        ready: bool = False,
    ) -> RunData:
        """Lazy sources are read at the largest input size among ``sides``; model-ready data
        (``ready``: a user's own Dataset or tensors) is batched as it is."""
        read = ReadOptions()
        if ready:
            lazy = input_kind(splits.train_x) == "lazy"
            workers = (default_workers() if workers is None else workers) if lazy else 0
            return cls(splits, True, ReadOptions(workers=workers, ready=True,
                                                 pin_memory=runtime.pin_memory))  # fmt: skip
        if input_kind(splits.train_x) == "lazy":
            shapes = [
                s.input.shape for s in sides if s.input is not None and s.input.kind == "image"
            ]
            if not shapes:
                raise StitchError("no model of this run takes images, and the data holds images")
            read = ReadOptions(
                workers=default_workers() if workers is None else workers,
                size=(max(s[1] for s in shapes), max(s[2] for s in shapes)),
                channels=max(s[0] for s in shapes),
                pin_memory=runtime.pin_memory,
            )
        return cls(splits, False, read)


# ------------------------------------------------------------------------------------ engine
@dataclass
class GroupResult:
    """One stitch of a group: its cell record (a dict in matrix.json's cell schema) and the
    trained module (None when refused or failed before training)."""

    cell: dict
    module: nn.Module | None = None
    family: StitchFamily | None = None


class Engine:
    """Computes groups of stitches for one run (one data set, one runtime, one cache)."""

    def __init__(
        self,
        data: RunData,
        cfg: StitchConfig,
        runtime: Runtime,
        cache: ActivationCache,
        *,
        cka_samples: int = 0,
        diagnostics: bool = True,
        log: Callable[[str], None] = lambda _m: None,
        on_step: Callable[[int, int], None] | None = None,
        on_pass: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        self.data, self.cfg, self.runtime, self.cache = data, cfg, runtime, cache
        self.cka_samples, self.diagnostics = cka_samples, diagnostics
        self.log, self.on_step, self.on_pass = log, on_step, on_pass
        self.num_classes = data.splits.num_classes
        self.train_idx, self.val_idx = data.fit_val(cfg)
        self._own: dict[tuple[int, str], torch.Tensor | None] = {}
        self._unreadable: dict[tuple[int, str], str] = {}
        self._extractors: dict[tuple[int, tuple], nn.Module] = {}

    # ----------------------------------------------------------- raw data through a side
    def raw(self, split: str, order: torch.Tensor, batch_size: int, min_batch: int = 1):
        inputs, labels = self.data.split(split)
        return raw_batches(inputs, labels, order, batch_size, self.data.read, min_batch=min_batch)

    def extractor(self, side: Side, cuts: list[Cut]) -> nn.Module:
        key = (id(side), tuple(c.node for c in cuts))
        if key not in self._extractors:
            self._extractors[key] = side.cutter.extractor(cuts)
        return self._extractors[key]

    @torch.no_grad()
    def sender_acts(self, side: Side, cuts: list[Cut], raw: RawBatch) -> tuple:
        x = side.view(raw.inputs, self.data.ready, self.runtime)
        with self.runtime.autocast():
            acts = self.extractor(side, cuts)(x)
        return acts if isinstance(acts, tuple) else (acts,)

    def stream_cost(self, senders: list[tuple[Side, list[Cut]]], batch: int = 32) -> float:
        """Seconds per sample to make sender activations on the fly: read a training batch and
        run each sender's prefix to its cuts (the second of two batches is timed: the first
        warms up)."""
        idx = torch.arange(min(self.data.size("train"), 2 * batch))
        total = 0.0
        for side, cuts in senders:
            t0, timed = time.perf_counter(), (0.0, 1)
            for raw in self.raw("train", idx, batch):
                self.sender_acts(side, cuts, raw)
                if self.runtime.device.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                timed, t0 = (t1 - t0, len(raw.idx)), t1
            total += timed[0] / timed[1]
        return total

    @torch.no_grad()
    def own_predictions(self, side: Side, split: str = "test") -> torch.Tensor | None:
        """The model's own predicted classes on a split (None when its output is not class
        scores over the data's classes); one pass per model, kept for the run."""
        key = (id(side), split)
        if key in self._own:
            return self._own[key]
        n = self.data.size(split)
        preds = torch.empty(n, dtype=torch.long)
        t0 = time.perf_counter()
        for raw in self.raw(split, torch.arange(n), EVAL_BATCH):
            x = side.view(raw.inputs, self.data.ready, self.runtime)
            with self.runtime.autocast():
                out = side.cutter.reference(x)
            try:
                logits = side.logits(out)
            except StitchError as exc:  # its logits cannot be read (e.g. a dict output)
                self._own[key], self._unreadable[key] = None, str(exc)
                return None
            if not head_fits(logits, self.num_classes):
                self._own[key] = None
                return None
            preds[raw.idx] = logits.argmax(1).cpu()
            self._pass("own predictions", raw, n, t0)
        self._own[key] = preds
        return preds

    def own_accuracy(self, side: Side) -> float | None:
        preds = self.own_predictions(side)
        if preds is None:
            return None
        return float((preds == self.data.splits.test_y).float().mean())

    def _pass(self, what: str, raw: RawBatch, total: int, t0: float) -> None:
        if self.on_pass:
            self.on_pass(what, int(raw.idx[-1]) + 1, total, time.perf_counter() - t0)

    def prepare_sender(self, key: str, side: Side, cuts: list[tuple[int, Cut]]) -> None:
        """Cache the sender's activations at ``cuts`` for both splits (no-op when streaming or
        already cached)."""
        if self.cache.streaming:
            return
        for split in ("train", "test"):
            todo = [(i, c) for i, c in cuts if i in self.cache.missing(key, split, [i])]
            if not todo:
                continue
            n = self.data.size(split)
            t0 = time.perf_counter()

            def batches(split=split, todo=todo, n=n, t0=t0):
                for raw in self.raw(split, torch.arange(n), EVAL_BATCH):
                    yield raw.idx, self.sender_acts(side, [c for _, c in todo], raw)
                    self._pass(f"sender pass ({split})", raw, n, t0)

            self.cache.fill(key, split, todo, batches(), n)

    # ----------------------------------------------------------- one group
    def run_group(
        self,
        variant: str,
        s_key: str,
        s_side: Side,
        s_cuts: list[tuple[int, Cut]],
        r_side: Side,
        r_cut: Cut,
        *,
        receiver_accuracy: float | None,
        families: dict | None = None,
        cka: bool = False,
    ) -> list[GroupResult]:
        """Build, initialise, train and measure a stitch from each sender cut into ``r_cut``."""
        cfg = self.cfg
        t0 = time.perf_counter()
        prefix, suffix = r_side.cutter.split(r_cut)
        results: list[GroupResult] = []
        members: list[Member] = []
        sample_idx = self.train_idx[
            torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(cfg.seed))
        ][: min(cfg.init_samples, len(self.train_idx))]
        r_sample = None
        if cfg.objective == "task" and receiver_accuracy is None and self._head_missing(r_side):
            reason = self._unreadable.get((id(r_side), "test")) or (
                f"{r_side.label}'s output is not class scores over the data's "
                f"{self.num_classes} classes: the task objective cannot train through it "
                "(use objective match, or give it a head: stitch train --head probe)"
            )
            return [
                GroupResult(self._cell(variant, i, c, r_cut, status="refused", reason=reason))
                for i, c in s_cuts
            ]
        for i, s_cut in s_cuts:
            cell = self._cell(variant, i, s_cut, r_cut, receiver_accuracy=receiver_accuracy)
            res = GroupResult(cell)
            results.append(res)
            try:
                if families and i in families:
                    fam, why = families[i]
                else:
                    fam, why = resolve_family(cfg.family, s_cut.spec, r_cut.spec)
            except StitchError as exc:
                cell.update(status="refused", reason=str(exc))
                continue
            cell.update(family=fam.name, family_reason=why)
            res.family = fam
            try:
                torch.manual_seed(cell_seed(cfg.seed, variant, s_cut.name, r_cut.name))
                module = fam.build(s_cut.spec, r_cut.spec, **cfg.family_options).to(
                    self.runtime.device
                )
                scratch = scratch_state(module) if cfg.init != "random" else None
                sample = None
                if cfg.init == "lstsq" or not fam.trainable:
                    if r_sample is None:
                        r_sample = self.receiver_acts(r_side, prefix, sample_idx, "train")
                    sample = (self.sender_sample(s_key, s_side, i, s_cut, sample_idx), r_sample)
                initialise(module, fam, cfg, sample)
            except (StitchError, RuntimeError, ValueError) as exc:
                cell.update(status="failed", reason=f"init: {_first_line(exc)}")
                continue
            res.module = module
            members.append(Member(i, module, fam.trainable, cell=res, scratch=scratch))
        if members:
            self._train_and_measure(
                members, variant, s_key, s_side, s_cuts, r_side, r_cut, prefix, suffix, r_sample
            )
        if cka and members:
            self._cka(s_key, s_side, s_cuts, r_side, r_cut, prefix, results)
        elapsed = time.perf_counter() - t0
        for res in results:
            res.cell["group_time_s"] = elapsed
            res.cell["time_s"] = elapsed / max(1, len(results))
        return results

    def _head_missing(self, side: Side) -> bool:
        return self.own_predictions(side) is None

    def _cell(self, variant, i, s_cut, r_cut, **extra) -> dict:
        return {
            "variant": variant, "i": i, "j": None, "sender_cut": s_cut.name,
            "receiver_cut": r_cut.name, "status": "ok", "reason": None, "family": None,
            "family_reason": None, "init": self.cfg.init, **extra,
        }  # fmt: skip

    @torch.no_grad()
    def receiver_acts(self, side: Side, prefix: nn.Module, idx: torch.Tensor, split: str,
                      pool: Callable[[torch.Tensor], torch.Tensor] | None = None):  # fmt: skip
        """The receiver's own activations at its cut for samples ``idx`` (``pool``-ed per batch
        when given: then only the pooled vectors are held)."""
        parts = []
        for raw in self.raw(split, idx, EVAL_BATCH):
            x = side.view(raw.inputs, self.data.ready, self.runtime)
            with self.runtime.autocast():
                acts = prefix(x).float()
            parts.append(pool(acts) if pool else acts)
        return torch.cat(parts)

    @torch.no_grad()
    def sender_sample(self, key, side, i, cut, idx) -> torch.Tensor:
        if not self.cache.streaming and (key, "train", i) in self.cache.stores:
            return self.cache.take(key, "train", i, idx).float()
        parts = [
            self.sender_acts(side, [cut], raw)[0].float()
            for raw in self.raw("train", idx, EVAL_BATCH)
        ]
        return torch.cat(parts)

    def feed(self, key, s_side, s_cuts, split, *, r_side=None, prefix=None, context=False,
             own_pred=False) -> GroupFeed:  # fmt: skip
        return GroupFeed(self, key, s_side, s_cuts, split, r_side, prefix, context, own_pred)

    def _train_and_measure(
        self, members, variant, s_key, s_side, s_cuts, r_side, r_cut, prefix, suffix, r_sample
    ) -> None:
        cfg = self.cfg
        guard = FrozenGuard(
            receiver_suffix=suffix, sender=self.extractor(s_side, [c for _, c in s_cuts])
        )
        want_ctx = bool(getattr(suffix, "needs_context", False))
        needed = sorted({m.key for m in members})
        cuts = [(i, c) for i, c in s_cuts if i in needed]
        train_feed = self.feed(
            s_key, s_side, cuts, "train", r_side=r_side, context=want_ctx,
            prefix=prefix if cfg.objective == "match" else None,
        )  # fmt: skip
        test_feed = self.feed(
            s_key, s_side, cuts, "test", r_side=r_side, context=want_ctx,
            prefix=prefix if (cfg.objective == "match" or self.diagnostics) else None,
            own_pred=self.diagnostics,
        )  # fmt: skip
        n_test = self.data.size("test")
        test_idx = torch.arange(n_test)
        kw = dict(num_classes=self.num_classes, logits_of=r_side.logits, objective=cfg.objective)
        before = evaluate_members(members, suffix, test_feed, test_idx, self.runtime, **kw)
        try:
            train_members(
                members, suffix, train_feed, cfg, self.runtime, train_idx=self.train_idx,
                val_idx=self.val_idx, num_classes=self.num_classes, logits_of=r_side.logits,
                on_step=self.on_step,
            )  # fmt: skip
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: record, go on
            for m in members:
                m.failed = m.failed or f"training: {type(exc).__name__}: {_first_line(exc)}"
        try:
            guard.verify()
        except FrozenModelError as exc:  # an engine or plugin bug: fail the cells loudly
            self.log(f"error: {exc}; the group's cells are recorded as failed")
            guard.restore()
            for m in members:
                m.failed = f"frozen model changed: {exc}"
        diag = None
        if self.diagnostics:
            layout = r_cut.spec.layout
            gauss = gaussian_of(
                pool_channels(r_sample, layout) if r_sample is not None else
                self.receiver_acts(r_side, prefix, self.train_idx[:2048], "train",
                                   pool=lambda acts: pool_channels(acts, layout))
            )  # fmt: skip
            diag = new_diagnostics(members, layout, gauss)
        after = evaluate_members(
            members, suffix, test_feed, test_idx, self.runtime, diagnostics=diag, **kw
        )
        for m in members:
            cell = m.cell.cell
            if m.failed:
                cell.update(status="failed", reason=m.failed)
                continue
            ev = after[id(m)]
            ra, sa = cell.get("receiver_accuracy"), ev["accuracy"]
            cell.update(
                init_accuracy=before[id(m)]["accuracy"],
                stitched_accuracy=sa,
                stitched_loss=ev["loss"] if cfg.objective == "task" else None,
                penalty=ra - sa if ra is not None and sa is not None else None,
                train_loss=m.train_curve[-1] if m.train_curve else None,
            )
            if "match_mse" in ev:
                cell["match_mse"] = ev["match_mse"]
            if m.trainable:
                cell.update(
                    epochs=m.epochs, stop=m.stop, converged=m.converged,
                    fine_tuned=m.fine_tuned, from_scratch=m.from_scratch,
                    train_curve=[round(v, 6) for v in m.train_curve],
                    val_curve=[round(v, 6) for v in m.val_curve],
                    val_loss=[round(v, 6) for v in m.val_loss],
                )  # fmt: skip
            else:
                cell.update(epochs=0, stop="closed-form", converged=None)
            if diag is not None:
                cell.update(diag[id(m)].result())
            warn = measurement_warning(sa, self.num_classes, m)
            if warn:
                cell["warning"] = warn

    @torch.no_grad()
    def _cka(self, key, s_side, s_cuts, r_side, r_cut, prefix, results) -> None:
        from .similarity import MinibatchCKA

        rows = [(k, res) for k, res in enumerate(results) if res.cell["status"] != "refused"]
        if not rows:
            return
        n = min(self.cka_samples, self.data.size("test"))
        cuts = [s_cuts[k] for k, _ in rows]
        feed = self.feed(key, s_side, cuts, "test", r_side=r_side, prefix=prefix)
        cka = MinibatchCKA(len(rows), 1)
        for batch in feed.batches(torch.arange(n), EVAL_BATCH, train=False):
            if len(batch.idx) < 4:
                continue
            cka.update([batch.acts[i].float() for i, _ in cuts], [batch.target.float()])
        values = cka.result()
        for r, (_, res) in enumerate(rows):
            v = float(values[r, 0])
            res.cell["cka"] = v if math.isfinite(v) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
