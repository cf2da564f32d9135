"""Bad input against the CLI, class by class: each case is run for real (in process, as
``stitch …``) and its exit code, stderr and what it left on disk are recorded. docs/errors.md is
the table of these outcomes, generated here: the test fails when the table is not current
(``STITCHCORE_UPDATE_DOCS=1 pytest tests/test_errors.py`` rewrites it), and when any case outside
the documented open gaps is not one line ``Error: …`` with exit code 2."""

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stitchcore.cli.main import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

#: A matrix that fails only through the option a case adds (options given twice: the last wins).
MATRIX = ("matrix", "--sender", "{A}", "--receiver", "{B}", "--sender-cuts", "layer2",
          "--receiver-cuts", "layer2", "--train-size", "100", "--max-epochs", "1",
          "--no-report", "--out", "{T}/o")  # fmt: skip
PAIR = ("pair", "--sender", "{A}", "--sender-cut", "layer2", "--receiver", "{B}",
        "--receiver-cut", "layer2", "--train-size", "100", "--epochs", "1")  # fmt: skip
TRAIN = ("train", "timm:resnet10t", "--data", "digits", "--train-size", "64", "--epochs", "1",
         "--no-progress", "--zoo", "{T}/zoo")  # fmt: skip


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the input class
    argv: tuple
    when: str = ""  # "no-cuda" / "no-mps": the outcome holds on machines without one


def M(*extra):  # noqa: N802 - reads as the doc's MATRIX
    return MATRIX + extra


def P(*extra):  # noqa: N802
    return PAIR + extra


def T(*extra):  # noqa: N802
    return TRAIN + extra


CASES = [
    # ---- models and sources
    Case("source", "unknown model source", ("cuts", "nosuch:resnet18")),
    Case("model", "unknown model", ("cuts", "timm:resnet1000")),
    Case("model-matrix", "unknown model (matrix)", M("--sender", "timm:resnet1000")),
    Case("weights", "unknown weights", ("cuts", "timm:resnet18@nosuchweights")),
    Case("zoo-model", "unknown zoo model", ("cuts", "zoo:nosuch")),
    Case("hf-offline", "Hugging Face model, offline", ("cuts", "hf:no-such-org/no-such-model")),
    Case("vissl-file", "missing checkpoint file", ("cuts", "vissl:{T}/missing.torch")),
    # ---- cuts
    Case("cut", "unknown cut (matrix)", M("--sender-cuts", "layer9")),
    Case("cut-empty", "empty cut list", M("--sender-cuts", ",")),
    Case("cut-pair", "unknown cut (pair)", P("--sender-cut", "layer9")),
    Case("cut-split", "unknown cut (split)", ("split", "{A}", "layer9")),
    # ---- families
    Case("family", "unknown family (matrix)", M("--family", "conv1x2")),
    Case("family-pair", "unknown family (pair)", P("--family", "conv1x2")),
    Case(
        "family-option-type",
        "family option of the wrong type",
        M("--family", "lowrank", "--family-option", "rank=abc"),
    ),  # fmt: skip
    Case(
        "family-option-range",
        "family option out of range",
        M("--family", "lowrank", "--family-option", "rank=0"),
    ),  # fmt: skip
    Case(
        "family-option-key",
        "family option the family lacks",
        M("--family", "conv1x1", "--family-option", "nosuch=1"),
    ),  # fmt: skip
    Case(
        "family-option-pair",
        "family option of the wrong type (pair)",
        P("--family", "lowrank", "--family-option", "rank=abc"),
    ),  # fmt: skip
    Case("family-option-form", "--family-option without =", M("--family-option", "noequals")),
    Case("family-option-key-empty", "--family-option without a key", M("--family-option", "=3")),
    # ---- data
    Case("data", "unknown dataset", M("--data", "digitz")),
    Case("data-empty", "empty dataset name", M("--data", "")),
    Case("data-variant", "unknown dataset variant", M("--data", "digits:bad")),
    Case("data-unavailable", "dataset not here, offline", M("--data", "cifar10")),
    Case("cifar-empty", "CIFAR directory without batches", M("--data", "cifar10:{T}/empty")),
    Case("cifar-garbage", "CIFAR directory of garbage", M("--data", "cifar10:{T}/cifar-garbage")),
    Case(
        "imagefolder-missing",
        "image folder that does not exist",
        M("--data", "imagefolder:{T}/missing"),
    ),  # fmt: skip
    Case("imagefolder-path", "image folder without a path", M("--data", "imagefolder:")),
    Case(
        "imagefolder-empty", "image folder with no images", M("--data", "imagefolder:{T}/noimages")
    ),  # fmt: skip
    Case(
        "imagefolder-unreadable",
        "image folder of unreadable images",
        M("--data", "imagefolder:{T}/unreadable", "--train-size", "8", "--epochs", "1"),
    ),  # fmt: skip
    Case("text-data", "text data for image models", M("--data", "fortunes")),
    Case("train-size-0", "--train-size 0", M("--train-size", "0")),
    Case("train-size-big", "--train-size beyond the split", M("--train-size", "100000")),
    Case("test-size-0", "--test-size 0", M("--test-size", "0")),
    Case("test-size-big", "--test-size beyond the test split", M("--test-size", "100000")),
    Case("validation", "too few samples to hold out validation", M("--train-size", "40")),
    Case("input-size", "--input-size too small", M("--input-size", "4")),
    Case("input-size-big", "--input-size absurdly large", M("--input-size", "99999")),
    Case("input-size-pair", "--input-size absurdly large (pair)", P("--input-size", "99999")),
    # ---- controls and shards
    Case("control", "unknown control", M("--controls", "random-senders")),
    Case("control-twice", "a control named twice", M("--controls", "random-sender,random-sender")),
    Case("shard-order", "--shard K > N", M("--shard", "3/2")),
    Case("shard-zero", "--shard 0/N", M("--shard", "0/2")),
    Case("shard-form", "--shard not K/N", M("--shard", "x")),
    # ---- training options
    Case("lr-nan", "--lr nan", M("--lr", "nan")),
    Case("lr-negative", "--lr negative", M("--lr", "-1")),
    Case("lr-zero", "--lr 0", M("--lr", "0")),
    Case("lr-inf", "--lr inf", M("--lr", "inf")),
    Case("lr-text", "--lr not a number", M("--lr", "abc")),
    Case("epochs", "--epochs negative", M("--epochs", "-1")),
    Case("max-epochs", "--max-epochs 0", M("--max-epochs", "0")),
    Case("unsolved-epochs", "--unsolved-epochs negative", M("--unsolved-epochs", "-1")),
    Case("batch-size", "--batch-size 1", M("--batch-size", "1")),
    Case("seed-huge", "--seed beyond 2³² − 1", M("--seed", "99999999999999999999")),
    Case("seed-negative", "--seed negative", M("--seed", "-1")),
    Case("init", "unknown --init", M("--init", "foo")),
    Case("objective", "unknown --objective", M("--objective", "foo")),
    Case("base-epochs", "--base-epochs 0", M("--base-epochs", "0")),
    # ---- cache and workers
    Case("cache-negative", "--cache-gb negative", M("--cache-gb", "-1")),
    Case("cache-nan", "--cache-gb nan", M("--cache-gb", "nan")),
    Case("cache-inf", "--cache-gb inf", M("--cache-gb", "inf")),
    Case("disk-cache-negative", "--disk-cache-gb negative", M("--disk-cache-gb", "-1")),
    Case("workers", "--workers negative", M("--workers", "-1")),
    # ---- device and precision
    Case("device-cuda", "--device cuda without a GPU", M("--device", "cuda"), when="no-cuda"),
    Case(
        "device-cuda-index",
        "--device cuda:7 (no such GPU)",
        M("--device", "cuda:7"),
        when="no-cuda",
    ),  # fmt: skip
    Case("device-unknown", "unknown --device", M("--device", "tpu")),
    Case("device-mps", "--device mps off a Mac", M("--device", "mps"), when="no-mps"),
    Case("precision", "unknown --precision", M("--precision", "fp8")),
    # ---- outputs
    Case("out-file", "--out is a file", M("--out", "{T}/afile")),
    Case("out-under-file", "--out under a file", M("--out", "{T}/afile/sub")),
    Case("out-unwritable", "--out not writable", M("--out", "/proc/x")),
    Case("out-empty", "--out empty", M("--out", "")),
    Case(
        "out-other-config", "--out of another configuration", M("--out", "{T}/m", "--lr", "2e-3")
    ),  # fmt: skip
    Case("save-unwritable", "pair --save not writable (before training)", P("--save", "/proc/x")),
    Case("save-file", "pair --save is a file", P("--save", "{T}/afile")),
    # ---- plot, report, merge
    Case("plot-missing", "plot of a missing directory", ("plot", "{T}/missing")),
    Case("plot-no-matrix", "plot of a directory without matrix.json", ("plot", "{T}/empty")),
    Case("plot-damaged", "plot of a truncated matrix.json", ("plot", "{T}/m-damaged")),
    Case("plot-unwritable", "plot --out not writable", ("plot", "{T}/m", "--out", "/proc/x.png")),
    Case(
        "plot-format", "plot --out of an unknown format", ("plot", "{T}/m", "--out", "{T}/x.bmpx")
    ),  # fmt: skip
    Case("plot-metric", "plot --metric unknown", ("plot", "{T}/m", "--metric", "nosuch")),
    Case("report-missing", "report of a missing directory", ("report", "{T}/missing")),
    Case(
        "report-unwritable",
        "report --out not writable",
        ("report", "{T}/m", "--out", "/proc/x.html"),
    ),  # fmt: skip
    Case("merge-empty", "merge of an empty directory", ("merge", "{T}/empty")),
    Case("merge-missing", "merge of a missing directory", ("merge", "{T}/missing")),
    Case("merge-foreign", "merge of cells of another configuration", ("merge", "{T}/foreign")),
    # ---- zoo and train
    Case("zoo-missing", "zoo --zoo missing directory", ("zoo", "--zoo", "{T}/missing")),
    Case("zoo-file", "zoo --zoo is a file", ("zoo", "--zoo", "{T}/afile")),
    Case("zoo-damaged", "zoo with a damaged record", ("zoo", "--zoo", "{T}/zoo-damaged")),
    Case("train-model", "train an unknown model", ("train", "timm:resnet1000", "--data", "digits")),
    Case("train-data", "train on an unknown dataset", T("--data", "digitz")),
    Case("train-text", "train an image model on text", T("--data", "fortunes")),
    Case("train-epochs", "train --epochs 0", T("--epochs", "0")),
    Case("train-lr-nan", "train --lr nan", T("--lr", "nan")),
    Case("train-lr-negative", "train --lr negative", T("--lr", "-1")),
    Case("train-batch-size", "train --batch-size 0", T("--batch-size", "0")),
    # ---- usage
    Case("command", "unknown command", ("matrixx",)),
    Case("option", "unknown option", ("matrix", "--lrr", "1")),
    Case("missing-option", "missing required option", ("matrix",)),
    Case("missing-argument", "missing argument", ("cuts",)),
]

#: Cases that are not yet one line and exit 2 (or not refused at all): each is an open issue
#: (docs/errors.md says what is wrong and where the fix belongs). A fix turns its row into a
#: one-line error: regenerate the doc and remove the id here.
OPEN: dict[str, str] = {}


@dataclass
class Outcome:
    exit: int
    lines: str  # number of stderr lines, or "traceback"
    message: str
    wrote: str  # for commands with --out {T}/o: whether anything was left there


# ------------------------------------------------------------------------------ the sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, digits_pair):
    """Files the cases point at, and a real one-cell matrix ({T}/m)."""
    t = tmp_path_factory.mktemp("errors")
    (t / "afile").write_text("x")
    (t / "empty").mkdir()
    (t / "noimages" / "cats").mkdir(parents=True)
    for cls in ("a", "b"):
        (t / "unreadable" / cls).mkdir(parents=True)
        for k in range(6):
            (t / "unreadable" / cls / f"{k}.png").write_bytes(bytes(range(256)) * 3)
    batches = t / "cifar-garbage" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (batches / name).write_bytes(b"\x03garbage" * 100)
    (t / "zoo-damaged").mkdir()
    (t / "zoo-damaged" / "timm-resnet10t-digits-s0-e3.json").write_text('{"name": "timm-re')
    specs = {"A": digits_pair[0].spec, "B": digits_pair[1].spec, "T": str(t)}
    res = CliRunner().invoke(cli, fill(M("--out", "{T}/m"), specs), prog_name="stitch")
    assert res.exit_code == 0, res.output
    shutil.copytree(t / "m", t / "m-damaged")
    text = (t / "m" / "matrix.json").read_text()
    (t / "m-damaged" / "matrix.json").write_text(text[: len(text) // 3])
    shutil.copytree(t / "m", t / "foreign")
    cell = t / "foreign" / "cells" / "main" / "0_0.json"
    cell.write_text(json.dumps({**json.loads(cell.read_text()), "digest": "0123456789abcdef"}))
    return specs


def fill(argv, specs) -> list[str]:
    return [a.format(**specs) for a in argv]


def applies(case: Case) -> bool:
    if case.when == "no-cuda":
        return not torch.cuda.is_available()
    if case.when == "no-mps":
        mps = getattr(torch.backends, "mps", None)
        return not (mps and mps.is_available())
    return True


@pytest.fixture(scope="module")
def outcomes(sandbox, zoo_dir):
    env = pytest.MonkeyPatch()
    t = Path(sandbox["T"])
    env.setenv("XDG_CACHE_HOME", str(t / "cache"))  # no dataset or weights cache of this machine
    env.setenv("STITCHCORE_DATA", "")
    env.setenv("STITCHCORE_OFFLINE", "1")
    found = {}
    try:
        for case in CASES:
            if applies(case):
                found[case.id] = run(case, sandbox, zoo_dir)
    finally:
        env.undo()
    return found


def run(case: Case, specs: dict, zoo_dir: Path) -> Outcome:
    t = Path(specs["T"])
    res = CliRunner().invoke(cli, fill(case.argv, specs), prog_name="stitch")
    out = t / "o"
    wrote = ""
    if "{T}/o" in case.argv:
        wrote = "yes" if out.exists() else "no"
        shutil.rmtree(out, ignore_errors=True)

    def clean(text: str) -> str:
        text = text.replace(str(t), "$TMP").replace(str(zoo_dir), "$ZOO")
        text = re.sub(r"\b[0-9a-f]{16}\b", "DIGEST", text)  # configuration digests
        # where a truncated JSON file breaks depends on its (timing-dependent) length
        return re.sub(r"line \d+, column \d+: [^)|]*", "line L, column C: …", text)

    if res.exception is not None and not isinstance(res.exception, SystemExit):
        first = str(res.exception).strip().splitlines()
        return Outcome(1, "traceback", clean(f"{type(res.exception).__name__}: "
                                             f"{first[0] if first else ''}"), wrote)  # fmt: skip
    lines = res.stderr.strip().splitlines() or res.stdout.strip().splitlines() or [""]
    message = lines[-1] if res.exit_code else lines[0]  # accepted: what it set out to do
    return Outcome(res.exit_code, str(len(res.stderr.strip().splitlines())), clean(message), wrote)


def conforms(o: Outcome) -> bool:
    return o.exit == 2 and o.lines == "1" and o.message.startswith("Error: ") and o.wrote != "yes"


# ------------------------------------------------------------------------------ the document
def display(argv, specs: dict) -> str:
    """Arguments as typed in a shell, with $TMP for the scratch directory."""
    words = [a.format(A=specs["A"], B=specs["B"], T="$TMP") for a in argv]
    return " ".join(w if w and " " not in w else shlex.quote(w) for w in words)


def command(case: Case, specs: dict) -> str:
    for prefix, name in ((MATRIX, "MATRIX"), (PAIR, "PAIR"), (TRAIN, "TRAIN")):
        if case.argv[: len(prefix)] == prefix:
            return f"{name} {display(case.argv[len(prefix) :], specs)}".strip()
    return f"stitch {display(case.argv, specs)}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row(case: Case, o: Outcome, specs: dict) -> str:
    cmd = command(case, specs)
    return (
        f"| {case.id} | {cell(case.what)} | `{cell(cmd)}` | {o.exit} | {o.lines} | {o.wrote} "
        f"| {cell(o.message)} |"
    )


def render(found: dict, specs: dict, old_rows: dict) -> str:
    rows = {c.id: row(c, found[c.id], specs) if c.id in found else old_rows.get(c.id, "")
            for c in CASES}  # fmt: skip
    ok = sorted(c.id for c in CASES if c.id in found and conforms(found[c.id]))
    n_ok = len(ok) + sum(1 for c in CASES if c.id not in found and c.id not in OPEN)
    gaps = "\n".join(f"- `{k}`: {why}." for k, why in OPEN.items()) or "- none."
    return f"""# Errors: what bad input gives

Every class of bad input tried against the CLI, and what each gives: the exit code, how many
lines on stderr, whether a matrix run left anything in its `--out`, and the message (the last
stderr line; the first for input that is accepted). **{n_ok} of {len(CASES)} give one line `Error: …` on stderr, exit code 2 and no
files.** `stitch --debug …` shows the traceback behind any of them.

This page is generated by `tests/test_errors.py`, which runs every case and fails when the table
is not what the commands give now; `STITCHCORE_UPDATE_DOCS=1 pytest tests/test_errors.py`
rewrites it. `$TMP` is the test's scratch directory (an empty directory, a file, a real
one-cell matrix `m`, …), `$ZOO` the zoo, and

- `MATRIX` = `stitch {display(MATRIX, specs)}`
- `PAIR` = `stitch {display(PAIR, specs)}`
- `TRAIN` = `stitch {display(TRAIN, specs)}`

(an option given twice: the last one counts). The `device-cuda`, `device-cuda-index` and
`device-mps` rows are what a machine without a CUDA GPU (or off a Mac) gives; on one with, the
test leaves those rows as they are.

## Open

Not yet one line and exit code 2, or not refused at all:

{gaps}

## The table

| id | input class | command | exit | lines | wrote | message |
|---|---|---|---|---|---|---|
""" + "\n".join(rows[c.id] for c in CASES) + "\n"  # fmt: skip


def doc_rows() -> dict:
    if not DOC.exists():
        return {}
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| id "):
            rows[line.split(" | ")[0][2:]] = line
    return rows


def test_errors_doc_is_current(outcomes, sandbox):
    text = render(outcomes, sandbox, doc_rows())
    if os.environ.get("STITCHCORE_UPDATE_DOCS"):
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, (
        "docs/errors.md is not what the commands give now; "
        "STITCHCORE_UPDATE_DOCS=1 pytest tests/test_errors.py rewrites it"
    )


def test_every_bad_input_is_one_line_and_exit_2(outcomes):
    wrong = {k: o for k, o in outcomes.items() if not conforms(o) and k not in OPEN}
    assert not wrong, wrong
    fixed = [k for k in OPEN if k in outcomes and conforms(outcomes[k])]
    assert not fixed, f"fixed: remove {fixed} from OPEN and regenerate docs/errors.md"
    assert len(outcomes) == sum(1 for c in CASES if applies(c))
    assert len({c.id for c in CASES}) == len(CASES)
