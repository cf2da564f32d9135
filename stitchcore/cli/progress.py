"""Progress bars on stderr (rich), silent when stderr is not a terminal or output is JSON."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .main import err_console


@contextmanager
def progress_bar(enabled: bool = True):
    """A rich Progress writing to stderr; disabled automatically off a terminal."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=True,
        disable=not enabled or not err_console.is_terminal,
    )
    with progress:
        yield progress


__all__ = [
    "progress_bar",
]
