"""What the reproduction studies under examples/ share: the command line and the record.

Each study's ``run.py`` defines ``run(out, zoo, mini, log) -> dict``, ``plot(result, out)`` and
``table(result) -> str`` and hands them to :func:`study_main`, which parses ``--mini / --out /
--zoo / --threads``, turns a StitchError into one line and exit code 2, and writes
``results.json`` with the command, commit, runtime, thread count and date beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def study_main(
    name: str,
    description: str,
    run: Callable[[Path, Path, bool, Callable[[str], None]], dict],
    plot: Callable[[dict, Path], list[Path]],
    table: Callable[[dict], str],
    argv: list[str] | None,
) -> dict:
    default_out = f"/tmp/stitchcore-examples/{name}"
    ap = argparse.ArgumentParser(prog=f"examples/{name}/run.py", description=description)
    ap.add_argument("--mini", action="store_true", help="miniature mode (tiny subsets, 1 epoch)")
    ap.add_argument("--out", default=None, help=f"output directory (default {default_out})")
    ap.add_argument("--zoo", default=None, help="zoo for the base models (default: OUT/zoo)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    import torch

    from stitchcore.errors import StitchError

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or default_out)
    zoo = Path(args.zoo) if args.zoo else out / "zoo"
    start, at_commit = time.perf_counter(), commit()  # HEAD may move while a long run goes on
    try:
        out.mkdir(parents=True, exist_ok=True)
        result = run(out, zoo, args.mini, lambda m: print(m, file=sys.stderr))
    except (StitchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    result.update(
        command=f"python examples/{name}/run.py {argv_text}".strip(), commit=at_commit,
        runtime_s=time.perf_counter() - start, threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )  # fmt: skip
    figures = plot(result, out)
    result["figures"] = [str(f) for f in figures]
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"results: {out / 'results.json'}, figures: {', '.join(f.name for f in figures)} "
          f"({result['runtime_s']:.0f} s)")  # fmt: skip
    return result


def commit() -> str:
    """The checkout's short commit hash (``unknown`` outside git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, ``-`` for a missing value."""
    return "-" if value is None else f"{100 * value:.1f}"
