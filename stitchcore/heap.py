"""A steady host heap: glibc's malloc settings for a process that allocates the same big tensors
every step.

glibc serves an allocation above its *mmap threshold* with a fresh ``mmap`` (zeroed pages, one
page fault each, given back on free) and the rest from its heap, and it moves that threshold up
at run time as big blocks are freed. A training step's activations (tens of MiB at a 64 px input,
hundreds at 224 px) sit right about that moving line, so from step to step some come from the
heap and some from fresh pages: the process's resident memory wanders by a few hundred MiB, and
its peak creeps up with the length of the run (more steps, more chances of a bad layout), and
every freshly mapped block costs its page faults again.

The same goes for giving memory back: glibc hands the top of its heap back to the kernel
whenever more than its *trim threshold* lies free there, which a step does at its end, when its
activations go; the next step faults the same pages in again (at a 224 px ResNet-50 step, 1.6 GB
of them: about 400,000 faults and 3.5 s of kernel time per step).

:func:`steady_heap` fixes both, once per process: an mmap threshold of 256 MiB and no trimming
on free. Blocks up to 256 MiB are reused from the heap, so resident memory reaches its level (the
largest step's) within a few steps and stays there, whatever the size of the data set, and the
steps run faster. The heap is instead handed back at the ends of phases, by
:func:`release_free_heap`: before the loader forks DataLoader workers (a forked process shares
those free pages and would keep its own copy of each one the parent then reuses), and when a run
closes its activation cache.

:func:`steady_heap` is called by :func:`stitchcore.runtime.make_runtime`, so every run of the
engine gets it. It does nothing off glibc, when the user has tuned malloc themselves
(``MALLOC_*_`` variables or ``glibc.malloc`` tunables), or when ``STITCHCORE_HEAP=default``.
Measured in benchmarks/README.md ("scale.py").
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["ENV_HEAP", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "release_free_heap", "steady_heap"]

ENV_HEAP = "STITCHCORE_HEAP"
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = -1  # never on free (mallopt(3): -1 disables trimming)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_state: dict[str, str] = {}


def steady_heap() -> str:
    """Fix glibc's mmap threshold and turn off its trimming on free, for this process (once);
    returns what was done: ``"steady"``, or why not (``"default: …"``)."""
    if not _state:
        _state["heap"] = _apply()
    return _state["heap"]


def release_free_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim(0)``), so a process
    forked now does not share them; a no-op off glibc."""
    if _state.get("heap") == "steady":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass


def _apply() -> str:
    if os.environ.get(ENV_HEAP, "").strip().lower() == "default":
        return f"default: ${ENV_HEAP}=default"
    tuned = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ]
    if tuned or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "default: malloc tuned by the user"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default: not glibc"
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return "steady" if ok else "default: mallopt refused"
