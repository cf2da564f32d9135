"""The local model zoo: base models trained by ``stitch train``, cached by configuration.

Each entry is ``NAME.safetensors`` (the whole classifier's state dict) plus ``NAME.json`` (the
record: base model spec, data and options, seed, epochs, width, input spec, head, accuracy,
timings, package versions). NAME is derived from the training configuration alone
(``timm-resnet18-digits-s0-e3``), so asking for the same configuration twice reuses the model.
Files are written to a temporary name and renamed, weights first: a record on disk always has
its weights, and a killed run leaves no half entry.

Where: ``--zoo DIR``, else ``$STITCHCORE_ZOO``, else ``$XDG_CACHE_HOME/stitchcore/zoo``
(``~/.cache/stitchcore/zoo``). Loading an entry (``zoo:NAME``) rebuilds the architecture from
the record's base spec with ``@random`` weights, so no pretrained weights are needed to use it.

Text data (``list[str]``, e.g. ``fortunes``) trains text models (a source's model with a
``preprocess``, e.g. ``hf:``) at ``seq_len`` tokens; a zoo text model comes back with its base
model's tokenizer. Training runs on ``device`` (not part of the name: where a model was trained
is recorded, not asked for) in ``precision`` (part of the name when not fp32).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .datasets import DataOptions, DataSplits, default_coarse, load_data
from .errors import StitchError, UnknownNameError
from .fileio import DamagedFileError, atomic_write, read_json
from .provenance import versions
from .runtime import PRECISIONS, make_runtime
from .sources import LoadedModel, build_model, parse_spec
from .spec import InputSpec, check_input_size
from .training import (
    HEADS,
    ModelInput,
    TrainConfig,
    adapt_input_channels,
    attach_head,
    dataset_normalisation,
    fit_linear_probe,
    stderr_log,
    train_classifier,
)

ENV_ZOO = "STITCHCORE_ZOO"
RECORD_FORMAT = 1


def zoo_dir(explicit: str | Path | None = None) -> Path:
    """The zoo directory: explicit, else $STITCHCORE_ZOO, else the user cache dir."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_ZOO):
        return Path(os.environ[ENV_ZOO]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "stitchcore" / "zoo"


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainRequest:
    """One training configuration; everything that changes the trained weights is here.

    ``head`` None means: ``finetune`` for ``@random`` (or no ``@``) and ``probe`` for other
    weights. A spec without ``@WEIGHTS`` trains from ``@random`` unless the head is ``probe``
    (a probe needs trained features, so the source's default weights are used).
    ``input_size`` None means the dataset default (see ``default_input_size``); ``seq_len`` is
    a text model's sequence length in tokens (None: the source's default). ``data_seed`` picks
    the training subset and label noise, apart from ``seed`` (init, order). ``precision``:
    autocast while training (fp32, bf16, fp16).
    """

    model: str
    data: str
    seed: int = 0
    epochs: int = 3
    train_size: int | None = None
    label_noise: float = 0.0
    coarse: bool = False
    width: float = 1.0
    input_size: int | None = None
    in_chans: int = 3
    head: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str = "adam"
    data_seed: int = 0
    seq_len: int | None = None
    precision: str = "fp32"
    test_size: int | None = None

    def __post_init__(self) -> None:  # the training options, refused as TrainConfig refuses them
        TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                    optimizer=self.optimizer, seed=self.seed)  # fmt: skip

    def resolved(self) -> TrainRequest:
        """The request with ``head`` and the model's weights made explicit."""
        parsed = parse_spec(self.model)
        untrained = parsed.weights is None or parsed.is_random
        head = self.head or ("finetune" if untrained else "probe")
        if head not in HEADS:
            raise StitchError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
        model = self.model
        if parsed.weights is None and head == "finetune":
            model = f"{model}@random"
        checks = [("epochs", self.epochs, 1), ("in-chans", self.in_chans, 1)]
        checks += [("test-size", self.test_size, 1)] if self.test_size is not None else []
        for label, value, low in checks:
            if value < low:
                raise StitchError(f"--{label} must be at least {low}, got {value}")
        check_input_size(self.input_size)
        if self.seq_len is not None and self.seq_len < 2:
            raise StitchError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.precision not in PRECISIONS:
            raise StitchError(
                f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if not 0 <= self.label_noise <= 1:
            raise StitchError(f"--label-noise must be in [0, 1], got {self.label_noise:g}")
        if self.width <= 0:
            raise StitchError(f"--width must be positive, got {self.width:g}")
        return dataclasses.replace(self, model=model, head=head)

    def name(self) -> str:
        """Deterministic zoo name, e.g. ``timm-resnet18-digits-s0-e3``."""
        r = self.resolved()
        parsed = parse_spec(r.model)
        model = _slug(f"{parsed.source}-{parsed.name}")
        if parsed.weights not in (None, "random"):
            w = parsed.weights
            model += "-" + (_slug(w) if re.fullmatch(r"[\w.-]{1,24}", w) else "w" + _digest(w))
        parts = [
            model,
            _slug(r.data),
            f"s{r.seed}",
            "probe" if r.head == "probe" else f"e{r.epochs}",
        ]
        if r.head == "finetune" and not parsed.is_random:
            parts.append("ft")
        finetune = r.head == "finetune"
        tags = [
            (r.train_size, lambda: f"n{r.train_size}"),
            (r.test_size, lambda: f"t{r.test_size}"),
            (r.label_noise, lambda: f"noise{r.label_noise:g}"),
            (r.coarse, lambda: "coarse"),
            (r.width != 1, lambda: f"w{r.width:g}"),
            (r.input_size, lambda: f"px{r.input_size}"),
            (r.seq_len, lambda: f"len{r.seq_len}"),
            (r.in_chans != 3, lambda: f"c{r.in_chans}"),
            (r.data_seed, lambda: f"d{r.data_seed}"),
            (finetune and r.lr, lambda: f"lr{r.lr:g}"),
            (finetune and r.batch_size, lambda: f"b{r.batch_size}"),
            (finetune and r.optimizer != "adam", lambda: r.optimizer),
            (r.precision != "fp32", lambda: r.precision),
        ]
        parts += [tag() for cond, tag in tags if cond]
        name = "-".join(parts)
        lossy = _slug(parsed.name) != parsed.name or _slug(r.data) != r.data.replace(":", "_")
        if len(name) > 120 or lossy:
            # long or lossy names (hub ids, paths) get a digest so distinct configs never collide
            name = f"{name[:100]}-{_digest(json.dumps(dataclasses.asdict(r), sort_keys=True))}"
        return name

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "_"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_input_size(height: int, width: int) -> int:
    """Small images (up to 32 px) train at 32 px: big enough for ResNet's five downsamplings to
    leave a 1×1 map, small enough that resnet18 trains in seconds per thousand images."""
    return 32 if max(height, width) <= 32 else max(height, width)


# ----------------------------------------------------------------------------- train / reuse
def ensure_trained(
    model: str,
    data: str,
    seed: int = 0,
    epochs: int = 3,
    *,
    zoo: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    log=stderr_log,
    device: str = "auto",
    **options,
) -> tuple[LoadedModel, dict]:
    """The trained model for this configuration, training and saving it only if the zoo lacks it.

    ``options`` are the other TrainRequest fields (train_size, test_size, label_noise, coarse, width,
    input_size, seq_len, in_chans, head, lr, batch_size, optimizer, data_seed, precision).
    ``device``: where to train when it must (auto|cpu|cuda|cuda:N|mps). Says on stderr (``log``)
    whether it reuses or trains.
    """
    try:
        request = TrainRequest(model=model, data=data, seed=seed, epochs=epochs, **options)
    except TypeError as exc:
        raise StitchError(f"ensure_trained: {exc}") from exc
    request = request.resolved()
    name = request.name()
    runtime = make_runtime(device, request.precision)  # a bad device fails before anything
    directory = zoo_dir(zoo)
    log = log or (lambda _msg: None)
    if not force and (directory / f"{name}.json").is_file():
        log(f"zoo: reusing zoo:{name} (trained before; --force retrains)")
        loaded = load_entry(name, directory)
        return loaded, loaded.meta
    record, module, base = train_entry(
        request, log=log, progress=progress, zoo=directory, runtime=runtime
    )
    record = save_entry(directory, name, module, record)
    return _loaded(module, record, base), record


def train_entry(
    request: TrainRequest,
    *,
    log=stderr_log,
    progress: bool | None = None,
    zoo: Path | None = None,
    runtime=None,
):
    """Train one configuration on ``runtime`` (default: the CPU in the request's precision);
    returns ``(record, module, base model)`` without saving anything."""
    log = log or (lambda _msg: None)
    r = request.resolved()
    runtime = runtime or make_runtime("cpu", r.precision)
    options = DataOptions(
        train_size=r.train_size,
        test_size=r.test_size,
        label_noise=r.label_noise,
        coarse=default_coarse(r.data) if r.coarse else None,
        seed=r.data_seed,
    )
    data = load_data(r.data, options)
    text = _check_kind(r, data)
    size = r.seq_len if text else r.input_size or default_input_size(*data.image_shape[1:])
    base = _build_seeded(r, size)
    # after resolved(), no @WEIGHTS means the source's default (trained) weights, for a probe
    parsed = parse_spec(r.model)
    pretrained = not parsed.is_random
    if text:
        if base.input.kind != "tokens" or base.preprocess is None:
            raise StitchError(
                f"{r.model} takes {base.input.kind} without a tokenizer; {r.data} holds text "
                "(train a text model with one, e.g. hf:all-MiniLM-L6-v2)"
            )
        spec = base.input
    elif base.input.kind != "image":
        raise StitchError(f"{r.model} takes {base.input.kind}; {r.data} holds images")
    else:
        spec = _input_spec(base, data, r.in_chans, size, pretrained)
    module, head = _shape_module(base, r, spec, data.num_classes)
    inputs = ModelInput(spec, base.preprocess, runtime)
    where = f" in {zoo}" if zoo else ""
    what = f"{len(data.train_y)} {'texts' if text else 'images'}, " + (
        "linear probe" if r.head == "probe" else f"{r.epochs} epoch" + "s" * (r.epochs != 1)
    )
    log(f"zoo: no trained {r.model} on {r.data}{where}; training zoo:{r.name()} now ({what})")
    config = TrainConfig(
        epochs=r.epochs,
        batch_size=r.batch_size,
        lr=r.lr,
        optimizer=r.optimizer,
        seed=r.seed,
        progress=progress,
    )
    if r.head == "probe":
        result = fit_linear_probe(module, head, data, inputs, log=log)
        head.probe = result.probe
    else:
        result = train_classifier(module, data, inputs, config, pretrained=pretrained, log=log)
    module.eval()
    record = {
        "format": RECORD_FORMAT,
        "name": r.name(),
        "base": r.model,
        "loaded_as": base.spec,
        "request": r.to_json(),
        "data": _data_json(r, data),
        "seed": r.seed,
        "epochs": r.epochs if r.head == "finetune" else 0,
        "width": r.width,
        "in_chans": r.in_chans,
        "input": spec.to_json(),
        "num_classes": data.num_classes,
        "head": dataclasses.asdict(head),
        "test_accuracy": round(result.test_accuracy, 5),
        "training": result.to_json(),
        "seconds": result.seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "threads": torch.get_num_threads(),
        "runtime": runtime.describe(),
        "parameters": sum(p.numel() for p in module.parameters()),
        "versions": _versions(base.module),
        "base_meta": _plain(base.meta),
        "hints": {
            "cuts": base.hints.cuts,
            "spatial_layout": base.hints.spatial_layout,
            "prefix_tokens": base.hints.prefix_tokens,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return record, module, base


def _check_kind(r: TrainRequest, data: DataSplits) -> bool:
    """True for text data; options that do not apply to the data's kind are errors."""
    if data.kind == "lazy":
        raise StitchError(
            f"stitch train reads image tensors or text; {r.data} is read lazily from files "
            "(train on a dataset held in memory, e.g. digits, cifar10, fortunes)"
        )
    text = data.kind == "text"
    wrong = (
        [("--input-size", r.input_size), ("--in-chans", r.in_chans != 3), ("--coarse", r.coarse)]
        if text
        else [("--seq-len", r.seq_len)]
    )
    for flag, value in wrong:
        if value:
            what = "text" if text else "images"
            raise StitchError(f"{flag} does not apply to {r.data}, which holds {what}")
    return text


def _build_seeded(r: TrainRequest, size: int) -> LoadedModel:
    """The base model, randomly initialised from ``r.seed`` when its weights are ``@random``.

    Sources that seed ``@random`` themselves take ``@random-SEED`` (timm does); others draw from
    the global generator, seeded here.
    """
    parsed = parse_spec(r.model)
    torch.manual_seed(r.seed)
    if parsed.weights == "random":
        try:
            return build_model(
                parsed.with_weights(f"random-{r.seed}"), width=r.width, input_size=size
            )
        except StitchError:
            torch.manual_seed(r.seed)
    return build_model(parsed, width=r.width, input_size=size)


def _input_spec(
    base: LoadedModel, data: DataSplits, in_chans: int, size: int, pretrained: bool
) -> InputSpec:
    """Pretrained weights keep their normalisation; from scratch, the data's own statistics."""
    mean, std = base.input.mean, base.input.std
    if pretrained and mean and std:
        if len(mean) != in_chans:
            mean = (sum(mean) / len(mean),) * in_chans
            std = (sum(std) / len(std),) * in_chans
    else:
        mean, std = dataset_normalisation(data, in_chans)
    return InputSpec((in_chans, size, size), mean=tuple(mean), std=tuple(std))


def _shape_module(base: LoadedModel, r: TrainRequest, spec: InputSpec, num_classes: int):
    """Input channels and head, applied the same way at training and at rebuild time."""
    module = base.module
    if spec.kind == "tokens":
        example = spec.example(2)
        pad = spec.extra.get("pad_token_id")
        return attach_head(module, num_classes, r.head, example, base.num_classes, pad)
    base_chans = base.input.shape[0] if base.input.kind == "image" else 3
    size = spec.shape[1:]
    if r.in_chans != base_chans:
        adapt_input_channels(module, r.in_chans, torch.zeros(2, base_chans, *size))
    example = torch.zeros(2, *spec.shape)
    try:
        with torch.no_grad():
            module.eval()(example)
    except Exception as exc:
        raise StitchError(
            f"{r.model} does not run on {'×'.join(map(str, spec.shape))} inputs ({exc}); "
            "try another --input-size"
        ) from exc
    return attach_head(module, num_classes, r.head, example, base.num_classes)


def _data_json(r: TrainRequest, data: DataSplits) -> dict:
    return {
        "spec": r.data,
        "train_size": r.train_size,
        "test_size": r.test_size,
        "label_noise": r.label_noise,
        "coarse": r.coarse,
        "data_seed": r.data_seed,
        "num_classes": data.num_classes,
        "train_samples": len(data.train_y),
        "test_samples": len(data.test_y),
        "kind": data.kind,
        **({} if data.kind == "text" else {"image_shape": list(data.image_shape)}),
    }


def _versions(module: torch.nn.Module) -> dict:
    """The run's versions plus the package the model's class comes from."""
    out = versions()
    package = type(module).__module__.split(".")[0]
    try:
        out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


def _plain(value):
    """JSON-safe copy of source metadata (drops what JSON cannot hold)."""
    return json.loads(json.dumps(value, default=lambda o: None))


# ----------------------------------------------------------------------------- files
def save_entry(directory: Path, name: str, module: torch.nn.Module, record: dict) -> dict:
    """Write weights then record, each atomically. Returns the record as written."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    weights = directory / f"{name}.safetensors"
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    record = {**record, "weights": weights.name}
    path = directory / f"{name}.json"
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return record


def list_entries(zoo: str | Path | None = None) -> list[dict]:
    """Records of every complete entry, sorted by name (:func:`damaged_entries` names the
    records that cannot be read)."""
    return _scan(zoo)[0]


def damaged_entries(zoo: str | Path | None = None) -> list[tuple[Path, str]]:
    """Each record file of the zoo that cannot be used, with why."""
    return _scan(zoo)[1]


def _scan(zoo: str | Path | None) -> tuple[list[dict], list[tuple[Path, str]]]:
    directory = zoo_dir(zoo)
    records: list[dict] = []
    damaged: list[tuple[Path, str]] = []
    if not directory.is_dir():
        return records, damaged
    for path in sorted(directory.glob("*.json")):
        try:
            record = read_json(path)
        except (OSError, DamagedFileError) as exc:
            damaged.append((path, exc.why if isinstance(exc, DamagedFileError) else str(exc)))
            continue
        if not isinstance(record, dict) or "name" not in record:
            damaged.append((path, "not a zoo record"))
        elif not (directory / record.get("weights", "")).is_file():
            damaged.append((path, f"its weights file {record.get('weights')!r} is missing"))
        else:
            records.append(record)
    return records, damaged


def read_record(name: str, zoo: str | Path | None = None) -> tuple[dict, Path]:
    """The record of ``name`` (or of a record file path) and its directory."""
    path = Path(name).expanduser()
    if name.endswith(".json") and path.is_file():
        directory = path.parent
    else:
        directory = zoo_dir(zoo)
        path = directory / f"{name}.json"
    if not path.is_file():
        known = [r["name"] for r in list_entries(directory)]
        raise UnknownNameError(
            "zoo model", name, known, hint=f"zoo {directory}; `stitch zoo` lists it"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StitchError(f"zoo record {path} is not valid JSON ({exc})") from exc
    if record.get("format") != RECORD_FORMAT:
        raise StitchError(
            f"zoo record {path} has format {record.get('format')!r}; expected {RECORD_FORMAT}"
        )
    return record, directory


def load_entry(name: str, zoo: str | Path | None = None, *, trained: bool = True) -> LoadedModel:
    """Rebuild a zoo model from its record and load its weights (strictly).

    ``trained=False`` keeps the rebuilt architecture's random initialisation (``zoo:NAME@random``,
    for listing cuts and random controls).
    """
    from .weights import load_state_dict_file

    record, directory = read_record(name, zoo)
    r = TrainRequest(**record["request"])
    spec = _recorded_input(record)
    text = spec.kind == "tokens"
    base = _rebuild_base(r, spec.shape[0] if text else spec.shape[1])
    if text:
        spec = base.input  # with its tokenizer and pad id
    module, head = _shape_module(base, r, spec, record["num_classes"])
    if dataclasses.asdict(head) | {"probe": {}} != record["head"] | {"probe": {}}:
        raise StitchError(
            f"zoo:{name}: rebuilt head {head} differs from the record's {record['head']}"
        )
    if not trained:
        return _loaded(module, record, base, suffix="@random")
    load_state_dict_file(module, directory / record["weights"])
    return _loaded(module, record, base)


def _recorded_input(record: dict) -> InputSpec:
    inp = record["input"]
    return InputSpec(
        tuple(inp["shape"]),
        dtype=inp.get("dtype", "float32"),
        kind=inp.get("kind", "image"),
        mean=tuple(inp["mean"]) if inp.get("mean") else None,
        std=tuple(inp["std"]) if inp.get("std") else None,
    )


def _rebuild_base(r: TrainRequest, size: int) -> LoadedModel:
    """The base architecture without its (possibly unavailable) pretrained weights."""
    parsed = parse_spec(r.model)
    try:
        return build_model(parsed.with_weights("random"), width=r.width, input_size=size)
    except StitchError:
        return build_model(parsed, width=r.width, input_size=size)


def _loaded(
    module: torch.nn.Module, record: dict, base: LoadedModel, suffix: str = ""
) -> LoadedModel:
    """The zoo model as a LoadedModel: the recorded input spec (for text, the base model's, with
    its tokenizer as ``preprocess``), the base model's cut names under the head."""
    hints_json = record.get("hints", {})
    cuts = hints_json.get("cuts")
    if cuts and record["head"].get("added"):
        cuts = ["trunk." + c for c in cuts]  # the base model sits under LinearHead.trunk
    from .spec import ModelHints

    spec = _recorded_input(record)
    text = spec.kind == "tokens"
    if text:
        spec = base.input
    hints = ModelHints(
        cuts=cuts,
        input=spec,
        spatial_layout=hints_json.get("spatial_layout", "nchw"),
        prefix_tokens=hints_json.get("prefix_tokens", 0),
    )
    for p in module.parameters():  # as any source hands out a model (a probe froze its trunk)
        p.requires_grad_(True)
    return LoadedModel(
        module=module,
        spec=f"zoo:{record['name']}{suffix}",
        input=spec,
        hints=hints,
        num_classes=record["num_classes"],
        meta=record,
        preprocess=base.preprocess if text else None,
    )


__all__ = [
    "ENV_ZOO",
    "TrainRequest",
    "damaged_entries",
    "default_input_size",
    "ensure_trained",
    "list_entries",
    "load_entry",
    "read_record",
    "save_entry",
    "train_entry",
    "zoo_dir",
]
