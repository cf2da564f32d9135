"""The ``fortunes`` text dataset, on the real files of Debian's ``fortunes`` package."""

from __future__ import annotations

import pytest
import torch
from stitchcore_datasets import fortunes

from stitchcore import plugins
from stitchcore.datasets import DataOptions, apply_options, load_data
from stitchcore.errors import StitchError

installed = pytest.mark.skipif(
    fortunes.find_dir() is None, reason="Debian package fortunes not installed"
)

# Quotations per topic in Debian 12's fortunes 1:1.99.1 once shared and repeated texts are gone.
COUNTS = {
    "art": 463,
    "computers": 1047,
    "definitions": 1200,
    "disclaimer": 284,
    "drugs": 206,
    "education": 201,
    "ethnic": 161,
    "food": 197,
    "humorists": 196,
    "kids": 150,
    "knghtbrd": 534,
    "law": 203,
    "linux": 329,
    "literature": 261,
    "love": 150,
    "men-women": 579,
    "people": 1243,
    "perl": 272,
    "platitudes": 496,
    "politics": 700,
    "science": 621,
    "songs-poems": 702,
    "startrek": 227,
    "wisdom": 419,
    "work": 627,
    "zippy": 546,
}


@installed
def test_fortunes_topics_counts_and_stratified_split():
    a = load_data("fortunes")
    assert a.kind == "text" and a.classes == list(COUNTS) and a.num_classes == 26
    assert isinstance(a.train_x, list) and isinstance(a.train_x[0], str)
    assert a.train_y.dtype == torch.int64 and len(a.train_x) == len(a.train_y)
    test = torch.bincount(a.test_y, minlength=26)
    total = torch.bincount(a.train_y, minlength=26) + test
    assert dict(zip(a.classes, total.tolist())) == COUNTS
    assert (test.double() - 0.2 * total).abs().max() <= 0.5  # 80/20 within every class
    assert (len(a.train_x), len(a.test_x)) == (9613, 2401)


@installed
def test_fortunes_texts_are_clean_unique_and_split_without_overlap():
    a = load_data("fortunes")
    texts = a.train_x + a.test_x
    assert len(set(texts)) == len(texts)  # shared and repeated quotations are gone
    assert not set(a.train_x) & set(a.test_x)
    assert all(t == " ".join(t.split()) and t for t in texts)  # whitespace-normalised
    assert not any("\b" in t for t in texts)  # overstrike resolved
    # computers holds "Calm down, it's *____^H^H^H^Honly* ones and zeroes." (underlined)
    calm = a.classes.index("computers")
    where = {t: int(y) for t, y in zip(texts, torch.cat([a.train_y, a.test_y]))}
    assert where["Calm down, it's *only* ones and zeroes."] == calm


@installed
def test_fortunes_split_is_deterministic():
    a = load_data("fortunes")
    fortunes._corpus.cache_clear()  # parsed again from the files
    b = load_data("fortunes")
    assert a.train_x == b.train_x and a.test_x == b.test_x
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_y, b.test_y)


@installed
def test_fortunes_train_and_test_size_subset_the_strings():
    full = plugins.get_dataset("fortunes").load()
    a = apply_options(full, DataOptions(train_size=500, test_size=100, seed=3))
    assert (len(a.train_x), len(a.test_x), len(a.train_y), len(a.test_y)) == (500, 100, 500, 100)
    assert isinstance(a.train_x, list) and set(a.train_x) <= set(full.train_x)
    pairs = dict(zip(full.train_x, full.train_y.tolist()))
    assert all(pairs[t] == int(y) for t, y in zip(a.train_x, a.train_y))  # labels follow texts
    b = apply_options(full, DataOptions(test_size=100, seed=4))  # the test subset ignores seeds
    assert b.test_x == a.test_x and a.meta["options"] == "n500-t100"
    with pytest.raises(StitchError, match="--test-size must be in 1..2401"):
        apply_options(full, DataOptions(test_size=5000))


def test_overstrike_reads_like_a_terminal():
    assert fortunes.overstrike("_\bI am") == "I am"
    assert fortunes.overstrike("*____\b\b\b\bonly*") == "*only*"
    assert fortunes.overstrike("b\bbo\bol\bld\bd") == "bold"
    assert fortunes.overstrike("plain") == "plain"


def test_quotation_parsing_on_a_written_file(tmp_path):
    f = tmp_path / "topic"
    f.write_text("First  one,\n\ttwo lines.\n%\n%\n\n  Second.  \n%\nThird\n")
    assert fortunes.read_quotations(f) == ["First one, two lines.", "Second.", "Third"]


def test_fortunes_missing_says_apt_get_install(monkeypatch, tmp_path):
    monkeypatch.setattr(fortunes, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("STITCHCORE_DATA", raising=False)
    assert "apt-get install fortunes" in plugins.get_dataset("fortunes").unavailable()
    with pytest.raises(StitchError, match="not available here.*apt-get install fortunes"):
        load_data("fortunes")
    (tmp_path / "art").write_text("a\n%\nb\n")
    with pytest.raises(StitchError, match=r"lacks the topic files computers, definitions"):
        load_data(f"fortunes:{tmp_path}")
