"""Reader for the IDX format of (Fashion-)MNIST: a big-endian header, then raw uint8 values."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from stitchcore.plugin import StitchError

__all__ = ["read_idx"]

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (``.gz`` or plain): labels ``N``, images ``N×H×W``, uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise StitchError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != _UBYTE:
        raise StitchError(f"{path}: only unsigned-byte IDX files are supported")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise StitchError(f"{path}: header says {dims} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
