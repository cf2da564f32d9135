"""Errors that mean "the user asked for something that does not exist or cannot work".

The CLI prints them as one line and exits with code 2; Python callers can catch them. Anything
else escaping the engine is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class StitchError(Exception):
    """Bad input: unknown names, impossible cuts or stitches, missing data or weights."""

    exit_code = 2


class UnknownNameError(StitchError, KeyError):
    """A name (source, model, cut, family, dataset) that is not known; lists close matches."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind, self.name = kind, name
        self.known = sorted(set(known))
        msg = f"unknown {kind} {name!r}"
        close = closest(name, self.known)
        if close:
            msg += f"; closest: {', '.join(close)}"
        elif self.known:
            shown = self.known[:12]
            msg += f"; known: {', '.join(shown)}" + (" …" if len(self.known) > 12 else "")
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would add quotes
        return self.args[0]


class CutError(StitchError):
    """A cut that exists as a node but cannot split the model into prefix and suffix."""


class OfflineError(StitchError):
    """Weights or data that would have to be downloaded, on a machine that cannot."""


def closest(name: str, known: Iterable[str], n: int = 5) -> list[str]:
    """Closest valid names: difflib's ratio, plus names that contain the query."""
    known = list(known)
    hits = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
    lowered = name.lower()
    for k in known:
        if len(hits) >= n:
            break
        if lowered and lowered in k.lower() and k not in hits:
            hits.append(k)
    return hits


__all__ = [
    "CutError",
    "OfflineError",
    "StitchError",
    "UnknownNameError",
    "closest",
]
