"""Where a group's batches come from: sender activations cached once (device or host memory,
or 16-bit files on disk) or streamed (the sender prefix run again per batch), and the receiver's
side of each batch (its own activation at the cut, its input, its predictions) when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .cache import ActivationStore, disk_read_rate
from .cuts import Cut
from .heap import release_free_heap
from .runtime import Runtime
from .trainer import Batch

__all__ = ["ActivationCache", "GroupFeed"]


class ActivationCache:
    """Sender activations at cuts, per (sender key, split): cached in stores, or streamed.

    ``mode`` is ``memory`` (device memory on a GPU when it fits, else host memory), ``disk``
    (16-bit memory-mapped files under ``spill_dir``) or ``stream`` (nothing kept: each batch runs
    the sender prefix again); :meth:`plan` chooses it from the bytes needed, the budgets and,
    between disk and stream, the measured cost of each.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        memory_budget: int,
        disk_budget: int = 0,
        spill_dir: Path | None = None,
        fp16: bool = False,
        mode: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.memory_budget, self.disk_budget = memory_budget, disk_budget
        self.spill_dir, self.fp16 = spill_dir, fp16
        self.mode = mode
        self.stores: dict[tuple, ActivationStore] = {}
        self.bytes = 0
        self.pass_s = 0.0

    def plan(
        self,
        per_sample_bytes: int,
        samples: int,
        log: Callable[[str], None],
        *,
        stream_cost: Callable[[], float] | None = None,
    ) -> str:
        """Choose the mode for ``samples`` samples of ``per_sample_bytes`` (fp32) and say why.

        In memory when it fits the memory budget (a gather per batch: nothing is cheaper).
        Otherwise by cost, when ``stream_cost`` (seconds per sample to read a batch and run the
        sender prefixes) is given and the 16-bit cache would fit the disk budget: on disk when
        reading a sample's activations back (at the rate measured under ``spill_dir``) is
        cheaper than computing them again, else streamed. Without ``stream_cost``, on disk
        whenever it fits.
        """
        if self.mode:
            what = {
                "memory": "cached in memory",
                "disk": "cached on disk in 16 bits",
                "stream": "streamed (the sender prefix runs once per batch for each group)",
            }
            log(f"activations: {what.get(self.mode, self.mode)} (--cache {self.mode})")
            if self.mode == "disk":
                self.fp16 = True
            return self.mode
        need32 = per_sample_bytes * samples
        need = need32 // 2 if self.fp16 else need32
        gb = lambda b: f"{b / 2**30:.2f} GB"  # noqa: E731
        if need <= self.memory_budget:
            self.mode = "memory"
            where = "GPU" if self.runtime.device.type == "cuda" else "host"
            why = f"{gb(need)} of sender activations fit the {gb(self.memory_budget)} budget"
            log(f"activations: cached in {where} memory ({why})")
            return self.mode
        beyond = f"{gb(need)} would not fit the {gb(self.memory_budget)} memory budget"
        if self.spill_dir is None or need32 // 2 > self.disk_budget:
            self.mode = "stream"
            log(
                f"activations: streamed (the sender prefix runs once per batch for each group: "
                f"{beyond}"
                + (f" nor the {gb(self.disk_budget)} disk budget)" if self.spill_dir else ")")
            )
            return self.mode
        costs = ""
        if stream_cost is not None:
            rate = disk_read_rate(self.spill_dir)
            read_s, compute_s = per_sample_bytes / 2 / rate, stream_cost()
            costs = (
                f"; per sample, reading {per_sample_bytes / 2 / 2**20:.2f} MiB back at a measured "
                f"{rate / 2**20:.0f} MiB/s takes {read_s * 1e3:.2f} ms, computing them again "
                f"{compute_s * 1e3:.2f} ms"
            )
            if compute_s < read_s:
                self.mode = "stream"
                log(f"activations: streamed, the cheaper way ({beyond}{costs})")
                return self.mode
        self.mode, self.fp16 = "disk", True
        log(
            f"activations: cached on disk in 16 bits under {self.spill_dir} "
            f"({gb(need32 // 2)}; {beyond}{costs})"
        )
        return self.mode

    @property
    def streaming(self) -> bool:
        return self.mode == "stream"

    def missing(self, key: str, split: str, cuts: list[int]) -> list[int]:
        return [i for i in cuts if (key, split, i) not in self.stores]

    def fill(
        self,
        key: str,
        split: str,
        cuts: list[tuple[int, Cut]],
        batches: Iterator[tuple[torch.Tensor, tuple]],
        n: int,
    ) -> None:
        """Store the activations that ``batches`` (indices, acts per cut) yield for a split."""
        on_device = self.mode == "memory" and self.runtime.device.type != "cpu"
        stores = []
        for i, cut in cuts:
            store = ActivationStore(
                n,
                cut.spec.shape,
                fp16=self.fp16,
                budget=self.memory_budget if self.mode == "memory" else 0,
                spill_dir=self.spill_dir,
                device=self.runtime.device if on_device else None,
            )
            self.stores[(key, split, i)] = store
            stores.append(store)
        t0 = time.perf_counter()
        for idx, acts in batches:
            for store, a in zip(stores, acts):
                store.put(idx, a)
        self.pass_s += time.perf_counter() - t0
        self.bytes += sum(s.nbytes for s in stores)

    def take(self, key: str, split: str, i: int, idx: torch.Tensor) -> torch.Tensor:
        return self.runtime.to(self.stores[(key, split, i)].take(idx))

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        self.stores.clear()
        release_free_heap()  # the run's activations are gone: their pages go back to the kernel


class GroupFeed:
    """Batches for a group on one split: sender activations at the group's cuts (cached or
    streamed), labels, and the receiver's activation (``prefix``), input (``context``) and own
    predictions when asked."""

    def __init__(self, engine, key, s_side, cuts, split, r_side, prefix, context, own_pred):
        self.e, self.key, self.s_side, self.cuts, self.split = engine, key, s_side, cuts, split
        self.r_side, self.prefix, self.context, self.own_pred = r_side, prefix, context, own_pred
        self.preds = engine.own_predictions(r_side, split) if own_pred else None
        self.needs_raw = engine.cache.streaming or prefix is not None or context

    def batches(self, order: torch.Tensor, batch_size: int, *, train: bool) -> Iterator[Batch]:
        e, rt = self.e, self.e.runtime
        min_batch = 2 if train else 1
        if not self.needs_raw:
            labels = e.data.split(self.split)[1]
            for idx in order.split(batch_size):
                if len(idx) < min_batch:
                    continue
                acts = {i: e.cache.take(self.key, self.split, i, idx) for i, _ in self.cuts}
                yield Batch(idx, rt.to(labels[idx]), acts, receiver_pred=self._pred(idx))
            return
        for raw in e.raw(self.split, order, batch_size, min_batch=min_batch):
            if e.cache.streaming:
                acts = dict(
                    zip(
                        [i for i, _ in self.cuts],
                        e.sender_acts(self.s_side, [c for _, c in self.cuts], raw),
                    )
                )
            else:
                acts = {i: e.cache.take(self.key, self.split, i, raw.idx) for i, _ in self.cuts}
            x_r, target = None, None
            if self.prefix is not None or self.context:
                x_r = self.r_side.view(raw.inputs, e.data.ready, rt)
            if self.prefix is not None:
                with torch.no_grad(), rt.autocast():
                    target = self.prefix(x_r)
            yield Batch(
                raw.idx, rt.to(raw.labels), acts, target=target,
                context=x_r if self.context else None, receiver_pred=self._pred(raw.idx),
            )  # fmt: skip

    def _pred(self, idx):
        return None if self.preds is None else self.e.runtime.to(self.preds[idx])
