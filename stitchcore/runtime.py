"""Where and in what precision the engine computes: one :class:`Runtime` per run.

Every tensor the engine makes lives on ``runtime.device``; frozen passes and stitch training run
under ``runtime.autocast()`` (bf16/fp16 when asked; fp32 is a no-op), fp16 training steps go
through ``runtime.scaler`` (a gradient scaler: fp16 gradients underflow without one). Least
squares, CKA and the diagnostics are computed in fp32/fp64 whatever the precision: their sums of
many products lose the answer in 16 bits.

``device="auto"`` is CUDA when available, else Apple's MPS, else the CPU. Under torchrun each rank
takes ``cuda:LOCAL_RANK`` (see :func:`distributed_device`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import StitchError
from .heap import steady_heap

__all__ = ["DEVICES", "PRECISIONS", "Runtime", "make_runtime", "resolve_device"]

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = "auto|cpu|cuda|cuda:N|mps"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name``; a device that is not here is a one-line StitchError."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        local = os.environ.get("LOCAL_RANK")
        if torch.cuda.is_available():
            return torch.device("cuda", int(local) % torch.cuda.device_count() if local else 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise StitchError(f"unknown device {name!r}; use {DEVICES}") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StitchError(f"--device {name}: no CUDA GPU is available here (use cpu or auto)")
        count = torch.cuda.device_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            raise StitchError(
                f"--device {name}: this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0…cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise StitchError(f"--device {name}: Apple MPS is not available here")
        return device
    raise StitchError(f"unsupported device {name!r}; use {DEVICES}")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


@dataclass(frozen=True)
class Runtime:
    """A device and a precision, and what follows from them."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return _DTYPES.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for frozen passes and stitch training (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to(self, value):
        """``value`` (a tensor, or a tuple/list/dict of them) on this device."""
        if isinstance(value, torch.Tensor):
            return value.to(self.device, non_blocking=True)
        if isinstance(value, dict):
            return {k: self.to(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(self.to(v) for v in value)
        return value

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return {"device": name, "precision": self.precision}


def make_runtime(device: str | torch.device | None = "auto", precision: str = "fp32") -> Runtime:
    """Validate ``device`` and ``precision`` together (fp16 and bf16 need a device that has
    them) and set the defaults a GPU run wants (cuDNN autotuning: shapes are fixed per group) and
    the host wants: a steady heap (:mod:`stitchcore.heap`), and denormal floats flushed to zero
    (frozen networks on real images make them, and on a CPU each one takes a slow path: a
    ResNet-50 training step at 224 px took 33.4 s with them, 20.9 s without; see
    benchmarks/README.md)."""
    if precision not in PRECISIONS:
        raise StitchError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise StitchError(f"--precision bf16: {torch.cuda.get_device_name(dev)} has no bf16")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    if dev.type == "mps" and precision == "bf16":
        raise StitchError("--precision bf16 is not supported on MPS; use fp16 or fp32")
    steady_heap()
    torch.set_flush_denormal(True)
    return Runtime(dev, precision)
