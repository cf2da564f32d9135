"""What the reproduction studies under examples/ share: the command line and the record.

A study's ``run.py`` defines ``run(out, zoo, mini, log) -> dict``, ``plot(result, out)`` (the
figures it wrote) and ``table(result)`` (a string or a rich renderable) and hands them to
:func:`study_main`, which parses ``--mini / --out / --zoo / --threads`` and the study's own
``options`` (passed to ``run`` as keyword arguments; a bad argument is one line and exit code 2),
turns a StitchError into one line and exit code 2, and writes
``results.json`` with the study, mode, command, commit, wall and CPU time, thread count, load
and date beside the numbers. Miniature runs go to their own default directory, so they never
overwrite a full run's results.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

OUT_ROOT = Path("/tmp/stitchcore-examples")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def study_main(
    name: str,
    description: str,
    run: Callable[[Path, Path, bool, Callable[[str], None]], dict],
    plot: Callable[[dict, Path], list[Path]],
    table: Callable[[dict], object],
    argv: list[str] | None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> dict:
    ap = _Parser(prog=f"examples/{name}/run.py", description=description)
    ap.add_argument(
        "--mini", action="store_true", help="miniature mode (tiny subsets, 1 fixed epoch)"
    )
    ap.add_argument("--out", help=f"output directory (default {OUT_ROOT}/{name}[-mini])")
    ap.add_argument("--zoo", help="zoo for the base models (default: OUT/zoo)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    common = {action.dest for action in ap._actions}
    if options is not None:
        options(ap)
    args = ap.parse_args(argv)
    extra = {k: v for k, v in vars(args).items() if k not in common}
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    import torch

    from stitchcore.errors import StitchError

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or OUT_ROOT / (name + "-mini" * args.mini)).expanduser()
    zoo = Path(args.zoo).expanduser() if args.zoo else out / "zoo"
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    # HEAD may move while a long run goes on: the commit is read at the start
    wall, cpu, load, at_commit = (
        time.perf_counter(),
        time.process_time(),
        os.getloadavg()[0],
        commit(),
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        numbers = run(out, zoo, args.mini, lambda m: print(m, file=sys.stderr), **extra)
    except (StitchError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    result = {
        "study": name,
        "mode": "mini" if args.mini else "full",
        **numbers,
        "command": f".venv/bin/python examples/{name}/run.py {argv_text}".strip(),
        "commit": at_commit,
        "runtime_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "threads": torch.get_num_threads(),
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    result["figures"] = [Path(f).name for f in plot(result, out)]
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    shown = table(result)
    if isinstance(shown, str):
        print(shown)
    else:
        from rich.console import Console

        Console(width=160).print(shown)
    print(f"results: {out / 'results.json'}, figures: {', '.join(result['figures'])} "
          f"({result['runtime_s']:.0f} s wall)")  # fmt: skip
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
