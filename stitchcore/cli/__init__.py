"""The ``stitch`` command line. Each command lives in its own module under this package."""

from .main import cli, main

__all__ = ["cli", "main"]
