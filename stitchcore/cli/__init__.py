"""The ``stitch`` command line. Each command lives in its own module under this package;
importing the package registers them all on the ``cli`` group."""

from . import commands  # noqa: F401  (registers the subcommands)
from .main import cli, main

__all__ = ["cli", "main"]
