"""``fortunes``: topic classification of quotations from Debian's ``fortunes`` package.

Offline, real, text: the package (``apt-get install fortunes``, BSD licence, see
docs/datasets.md) installs fortune-mod's collections under ``/usr/share/games/fortunes``, one
file per topic, quotations separated by lines holding only ``%``. Each topic file is a class.

The topics are fixed (``TOPICS``), so every machine has the same classes: the collections of the
Debian 12 package (1:1.99.1) with at least 150 quotations, less the three grab-bags
(``cookie``, ``fortunes``, ``miscellaneous``) whose files are not about one topic. The
offensive ``off/`` directory and the ``*.dat``/``*.u8`` index and recoded copies are never read.

Each quotation is cleaned of terminal overstriking (``_\\bX`` underlines) and whitespace-
normalised (one space between words; line breaks and ASCII-art layout go). A quotation that
occurs in two topics is left out (its label would be ambiguous), and repeats within a topic are
kept once, so no text is in both splits. The split is 80/20 per class with a fixed seed. Inputs
are ``list[str]``: each model's own tokenizer turns them into its input.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from stitchcore.plugin import Dataset, DataSplits, StitchError

from ._split import stratified_split
from ._store import data_roots, file_key

__all__ = ["DEBIAN_DIR", "TOPICS", "Fortunes", "overstrike", "read_quotations"]

DEBIAN_DIR = Path("/usr/share/games/fortunes")
TOPICS = (
    "art",
    "computers",
    "definitions",
    "disclaimer",
    "drugs",
    "education",
    "ethnic",
    "food",
    "humorists",
    "kids",
    "knghtbrd",
    "law",
    "linux",
    "literature",
    "love",
    "men-women",
    "people",
    "perl",
    "platitudes",
    "politics",
    "science",
    "songs-poems",
    "startrek",
    "wisdom",
    "work",
    "zippy",
)
HOW_TO = "install the Debian package: sudo apt-get install fortunes"


def overstrike(line: str) -> str:
    """What a terminal shows for ``line``: a backspace steps back and the next character
    overwrites, except that an underscore does not hide a character (``_\\bX`` and ``X\\b_``
    both read ``X``)."""
    if "\b" not in line:
        return line
    out: list[str] = []
    pos = 0
    for ch in line:
        if ch == "\b":
            pos = max(0, pos - 1)
            continue
        if pos < len(out):
            if ch != "_" or out[pos] == " ":
                out[pos] = ch
        else:
            out.append(ch)
        pos += 1
    return "".join(out)


def read_quotations(path: Path) -> list[str]:
    """The whitespace-normalised quotations of one fortune file, in file order (empty ones
    dropped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StitchError(f"cannot read {path}: {exc.strerror or exc}") from None
    quotes, current = [], []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            quotes.append(current)
            current = []
        else:
            current.append(overstrike(line))
    quotes.append(current)
    cleaned = (" ".join(" ".join(q).split()) for q in quotes)
    return [q for q in cleaned if q]


def find_dir(variant: str | None = None) -> Path | None:
    """The first directory holding every topic file: ``fortunes:DIR``, the Debian package,
    then ``$STITCHCORE_DATA/fortunes``."""
    dirs = (
        [Path(variant).expanduser()]
        if variant
        else [DEBIAN_DIR, *(r / "fortunes" for r in data_roots())]
    )
    for d in dirs:
        if all((d / t).is_file() for t in TOPICS):
            return d
    return None


@functools.lru_cache(maxsize=4)
def _corpus(directory: str, key: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Texts and labels of every topic (``key`` names the files' sizes and mtimes, so a changed
    file is re-read): unique within a topic, shared texts dropped."""
    per_topic = []
    for topic in TOPICS:
        seen = dict.fromkeys(read_quotations(Path(directory) / topic))  # ordered, unique
        per_topic.append(list(seen))
    owners: dict[str, int] = {}
    for quotes in per_topic:
        for q in quotes:
            owners[q] = owners.get(q, 0) + 1
    texts, labels = [], []
    for label, quotes in enumerate(per_topic):
        kept = [q for q in quotes if owners[q] == 1]
        texts += kept
        labels += [label] * len(kept)
    return tuple(texts), tuple(labels)


class Fortunes(Dataset):
    name = "fortunes"
    description = f"topic classification of {len(TOPICS)} fortune files, text (Debian fortunes)"
    variants = ("DIR",)

    def unavailable(self) -> str | None:
        if find_dir() is not None:
            return None
        return f"no fortune files in {DEBIAN_DIR}; {HOW_TO}"

    def load(self, variant: str | None = None) -> DataSplits:
        directory = find_dir(variant)
        if directory is None:
            where = variant or str(DEBIAN_DIR)
            missing = [t for t in TOPICS if not (Path(where).expanduser() / t).is_file()]
            raise StitchError(
                f"fortunes: {where} lacks the topic files {', '.join(missing[:6])}"
                + (" …" if len(missing) > 6 else "")
                + f"; {HOW_TO}"
            )
        key = file_key(*(directory / t for t in TOPICS))
        texts, labels = _corpus(str(directory), key)
        y = np.asarray(labels, dtype=np.int64)
        train, test = stratified_split(y)
        return DataSplits(
            name=self.name,
            train_x=[texts[i] for i in train],
            train_y=torch.from_numpy(y[train]),
            test_x=[texts[i] for i in test],
            test_y=torch.from_numpy(y[test]),
            num_classes=len(TOPICS),
            classes=list(TOPICS),
            meta={"source": str(directory), "kind": "text", "split": "80/20 per class"},
        )
