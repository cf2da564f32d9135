"""Imports every command module so that each registers itself on the ``stitch`` group."""

# ruff: noqa: F401
from . import (
    cuts_cmd,
    datasets_cmd,
    matrix_cmd,
    pair_cmd,
    plot_cmd,
    plugins_cmd,
    report_cmd,
    split_cmd,
    train_cmd,
)

__all__ = []
