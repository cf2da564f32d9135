"""Survey timm: how many models trace (torch.fx / torch.export), how many cuts verify.

One model per timm model module (the smallest-sounding name, with a pretrained input of at most
256 px), random weights, eval mode, the smallest input the model accepts among a few tries. For
each model it counts

- the backend that traced it (``fx``, ``export``) or the reason neither could;
- default cuts (block/stage boundaries): listed, verified by the engine (on a batch one larger
  than the example), and re-checked here at the example's own batch size;
- every valid cut (``all=True``): candidates from the liveness analysis, and how many of them
  the engine verified.

"Verified" is the engine's invariant: ``suffix(prefix(x))`` equals ``model(x)`` (same dtype,
allclose at 1e-5 relative and absolute) and the suffix leaves its input tensor untouched.

    .venv/bin/python benchmarks/cut_survey.py                 # all modules (several minutes)
    .venv/bin/python benchmarks/cut_survey.py --limit 20      # the first 20 modules
    .venv/bin/python benchmarks/cut_survey.py --models resnet18,vit_tiny_patch16_224
    .venv/bin/python benchmarks/cut_survey.py --json survey.json

Runs on CPU with one thread; a model that takes longer than ``--timeout`` seconds is recorded
as timed out and the survey goes on.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import timm
import torch

import stitchcore.graph
from stitchcore import Cutter
from stitchcore.errors import StitchError

# modules whose smallest model is still too large for a CPU survey (research notes: skipped)
SKIP_MODULES = {"deepseek_vit", "gemma4_vit", "qwen3_vit", "pnasnet"}

# words in timm names, smallest first; a name's rank is its smallest word
_SIZE_WORDS = [
    ("test",),
    ("atto",),
    ("femto",),
    ("pico",),
    ("nano", "xxxs"),
    ("xxs", "xxsmall"),
    ("xs", "xsmall", "xtiny"),
    ("tiny", "ti", "t", "mini", "lite0", "b0", "s0", "a0"),
    ("small", "s"),
    ("medium", "m"),
    ("base", "b"),
    ("large", "l"),
    ("xl", "xlarge"),
    ("huge", "h"),
    ("giant", "g", "gigantic"),
]
_RANK = {word: rank for rank, words in enumerate(_SIZE_WORDS) for word in words}


def size_key(name: str) -> tuple:
    """Sort key that puts the smallest-sounding variant first (no model is built)."""
    tokens = re.split(r"[_\-.]", name.lower())
    ranks = [_RANK.get(t, _RANK.get(re.sub(r"\d+$", "", t))) for t in tokens]  # s12 -> s
    rank = min((r for r in ranks if r is not None), default=9)
    numbers = [int(n) for n in re.findall(r"\d+", name)]
    return (rank, numbers[:1] or [0], len(name), name)


def smallest_per_module(max_px: int = 256) -> list[str]:
    chosen = []
    for module in timm.list_modules():
        if module in SKIP_MODULES:
            continue
        names = []
        for name in timm.list_models(module=module):
            cfg = timm.models.get_pretrained_cfg(name)
            size = (cfg.input_size if cfg else None) or (3, 224, 224)
            if max(size[1:]) <= max_px:
                names.append(name)
        if names:
            chosen.append(min(names, key=size_key))
    return chosen


@dataclass
class Row:
    model: str
    module: str = ""
    input: list[int] = field(default_factory=list)
    backend: str = ""
    error: str = ""
    nodes: int = 0
    default_listed: int = 0
    default_verified: int = 0
    default_rechecked: int = 0
    all_candidates: int = 0
    all_verified: int = 0
    seconds: float = 0.0


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _build(name: str, sizes: tuple[int, ...]) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and an example at the smallest size it runs at (tried in order, then its
    pretrained size). Models whose constructor takes ``img_size`` are built for each size."""
    cfg = timm.models.get_pretrained_cfg(name)
    channels, default = ((cfg.input_size if cfg else None) or (3, 224, 224))[:2]
    model, takes_size, last_error = None, True, None
    for size in [*sizes, default]:
        torch.manual_seed(0)
        if takes_size:
            try:
                kwargs = {} if size == default else {"img_size": size}
                model = timm.create_model(name, pretrained=False, **kwargs).eval()
            except TypeError as exc:  # no img_size argument: one model for every size
                if "img_size" not in str(exc):
                    raise
                takes_size = False
            except Exception as exc:  # this size is not allowed for this architecture
                last_error = exc
                continue
        if model is None or not takes_size and size == sizes[0]:
            model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                model(x)
            return model, x
        except Exception as exc:  # too small for this model: try the next size
            last_error = exc
    raise RuntimeError(f"no input size works: {last_error}")


def survey_one(name: str, sizes: tuple[int, ...], timeout: int) -> Row:
    row = Row(name, timm.models._registry._model_to_module.get(name, ""))
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        model, x = _build(name, sizes)
        row.input = list(x.shape[1:])
        cutter = Cutter(model, example_input=x)
        graph = cutter.backend.graph
        row.backend, row.nodes = graph.backend, len(graph.order)
        defaults = cutter.backend.default_cuts()
        candidates = cutter.backend.all_cuts()
        row.default_listed, row.all_candidates = len(defaults), len(candidates)
        try:
            verified = {c.node for c in cutter.cuts(all=True)}
        except StitchError:
            verified = set()
        row.all_verified = len(verified)
        row.default_verified = sum(c.node in verified for c in defaults)
        for cut in defaults:
            if cut.node in verified:
                try:
                    cutter.split(cut)  # re-checks suffix(prefix(x)) at the example's batch
                    row.default_rechecked += 1
                except StitchError:
                    pass
    except _Timeout:
        row.error = f"timed out after {timeout}s"
    except Exception as exc:  # record and go on: the survey reports failures, it does not stop
        row.error = (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            if str(exc)
            else type(exc).__name__
        )
    finally:
        signal.alarm(0)
    row.seconds = round(time.perf_counter() - start, 1)
    return row


def summarize(rows: list[Row]) -> dict:
    traced = [r for r in rows if r.backend]
    return {
        "models": len(rows),
        "traced": len(traced),
        "traced_fx": sum(r.backend == "fx" for r in rows),
        "traced_export": sum(r.backend == "export" for r in rows),
        "failed": [f"{r.model}: {r.error}" for r in rows if not r.backend],
        "default_cuts_listed": sum(r.default_listed for r in traced),
        "default_cuts_verified": sum(r.default_verified for r in traced),
        "default_cuts_rechecked": sum(r.default_rechecked for r in traced),
        "models_all_defaults_verified": sum(
            r.default_listed > 0 and r.default_verified == r.default_listed for r in traced
        ),
        "models_without_default_cuts": [r.model for r in traced if not r.default_listed],
        "cut_candidates": sum(r.all_candidates for r in traced),
        "cuts_verified": sum(r.all_verified for r in traced),
        "median_cuts_per_model": statistics.median([r.all_verified for r in traced] or [0]),
        "seconds": round(sum(r.seconds for r in rows), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma list of timm models (default: one per module)")
    parser.add_argument("--limit", type=int, help="survey only the first N models")
    parser.add_argument("--sizes", default="32,64,96", help="input sizes to try, smallest first")
    parser.add_argument("--timeout", type=int, default=90, help="seconds per model")
    parser.add_argument("--json", dest="json_out", help="write rows and summary to this file")
    parser.add_argument(
        "--backend",
        choices=("auto", "fx", "export"),
        default="auto",
        help="auto: torch.fx, torch.export when FX fails (the engine's behaviour); "
        "fx or export: only that tracer",
    )
    args = parser.parse_args(argv)
    if args.backend != "auto":
        stitchcore.graph.BACKENDS = (args.backend,)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    names = args.models.split(",") if args.models else smallest_per_module()
    names = names[: args.limit] if args.limit else names
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = []
    print(
        f"surveying {len(names)} timm {timm.__version__} models (tracers: "
        f"{', '.join(stitchcore.graph.BACKENDS)})",
        file=sys.stderr,
    )
    header = f"{'model':38} {'input':>11} {'via':6} {'nodes':>5} {'default ok/n':>12} {'all ok/n':>9} {'s':>6}"
    print(header)
    for name in names:
        row = survey_one(name, sizes, args.timeout)
        rows.append(row)
        shape = "x".join(map(str, row.input[1:])) if row.input else "-"
        if row.backend:
            print(
                f"{name:38} {shape:>11} {row.backend:6} {row.nodes:5d} "
                f"{row.default_verified:>5}/{row.default_listed:<6} "
                f"{row.all_verified:>4}/{row.all_candidates:<4} {row.seconds:6.1f}",
                flush=True,
            )
        else:
            print(f"{name:38} {shape:>11} FAILED {row.error}  ({row.seconds}s)", flush=True)
    summary = summarize(rows)
    print()
    how = "chosen" if args.models else "one per model module"
    print(f"timm models surveyed: {summary['models']} ({how})")
    print(
        f"traced: {summary['traced']} (torch.fx {summary['traced_fx']}, "
        f"torch.export fallback {summary['traced_export']}); failed: {len(summary['failed'])}"
    )
    for failure in summary["failed"]:
        print(f"  failed: {failure}")
    print(
        f"default cuts: {summary['default_cuts_verified']} of {summary['default_cuts_listed']} "
        f"verify (re-checked at the example batch: {summary['default_cuts_rechecked']}); "
        f"models whose every default cut verifies: {summary['models_all_defaults_verified']}"
    )
    print(
        f"all cuts: {summary['cuts_verified']} of {summary['cut_candidates']} candidates verify; "
        f"median {summary['median_cuts_per_model']} verified cuts per model"
    )
    print(f"time: {summary['seconds']} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"summary": summary, "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
