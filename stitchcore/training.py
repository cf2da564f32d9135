"""Training base classifiers: from scratch, fine-tuned, or as a linear probe on a frozen trunk.

Stitching needs trained networks, and offline there may be none: this module trains any
``nn.Module`` classifier on a dataset's ``DataSplits``. It knows no model source (models are built
by :func:`stitchcore.sources.build_model`).

Defaults, chosen to reach high accuracy in a few CPU epochs on small data:
  * Adam, lr 1e-3 (3e-4 when fine-tuning weights that are not ``@random``), cosine decay to
    zero over all steps, no weight decay;
  * batch size from the training-set size (32 … 128, at least ~25 steps per epoch where the
    data allows) so that small subsets still take enough steps;
  * after training, BatchNorm statistics are recomputed exactly on up to 2,048 training images
    (the running averages lag far behind the weights after a few dozen steps, which is why first
    epochs otherwise test near chance);
  * seeded: same seed, same data, same thread count → identical weights on CPU.

Heads: ``finetune`` trains everything; ``probe`` freezes the trunk and fits a linear classifier
on its features by full-batch L-BFGS (Bansal et al.'s linear-probe protocol for self-supervised
models), computed once from cached features.

Inputs: image tensors are adapted to the model's InputSpec batch by batch; text (``list[str]``)
goes through the model's ``preprocess`` (its tokenizer). Everything runs on ``runtime``'s device
under its autocast (bf16/fp16), fp16 steps through a gradient scaler; the probe's L-BFGS runs in
fp32 on the CPU. On the CPU in fp32 this is exactly the computation without a runtime.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import DataSplits, adapt, input_kind, subset
from .errors import StitchError
from .runtime import Runtime
from .spec import InputSpec

HEADS = ("finetune", "probe")
OPTIMIZERS = ("adam", "sgd")
BN_RECALIBRATION_SAMPLES = 2048

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelInput:
    """How raw dataset inputs reach a model, on ``runtime``'s device: images adapted to
    ``spec`` (on the CPU, then moved), text (``list[str]``) through ``preprocess``. Functions
    below take it, or a bare InputSpec (images, on the CPU)."""

    spec: InputSpec
    preprocess: Callable[[list[str]], torch.Tensor] | None = None
    runtime: Runtime = field(default_factory=Runtime)

    def __call__(self, raw) -> torch.Tensor:
        if input_kind(raw) == "text":
            if self.preprocess is None:
                raise StitchError("the data holds text and the model has no tokenizer (preprocess)")
            return self.runtime.to(self.preprocess(list(raw)))
        return self.runtime.to(adapt(raw, self.spec))


def model_input(spec: InputSpec | ModelInput) -> ModelInput:
    return spec if isinstance(spec, ModelInput) else ModelInput(spec)


def _batches(x, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """Deterministic mini-batches of (inputs, labels), images or text."""
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield subset(x, idx), y[idx]


# ----------------------------------------------------------------------------- heads
class LinearHead(nn.Module):
    """A trunk whose output is pooled to a vector and fed to a linear classifier.

    Used when the model has no classifier of its own to replace (SSL trunks, generic modules).
    Pooling: feature maps are averaged over space (``avg2d``); a token sequence is averaged over
    its tokens — over the *non-padding* ones (``tokens-masked``) when the input is token ids with
    a known pad id, so that a text's share of padding (which varies with its length) does not
    dilute it; this is the mean pooling sentence encoders such as all-MiniLM-L6-v2 are trained
    with. (Models of the hf: source get their own head, pooled the same way for encoders and at
    the last real token for causal decoders: plugins/stitchcore_hf/text.py.) The pooling is fixed
    at construction so the module stays traceable by torch.fx.
    """

    def __init__(
        self, trunk: nn.Module, in_features: int, num_classes: int, pool: str, pad_id: int = 0
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool
        self.pad_id = pad_id
        self.head = nn.Linear(in_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(x)
        if self.pool == "avg2d":
            return out.mean(dim=(2, 3))
        if self.pool == "tokens":
            return out.mean(dim=1)
        if self.pool == "tokens-masked":
            keep = (x != self.pad_id).unsqueeze(-1).to(out.dtype)
            return (out * keep).sum(1) / keep.sum(1).clamp_min(1)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _pool_for(out: object, example: torch.Tensor, pad_id: int | None) -> str:
    if not isinstance(out, torch.Tensor):
        raise StitchError(
            f"cannot put a linear head on a model that returns {type(out).__name__}; "
            "it must return a tensor (features or logits)"
        )
    pool = {4: "avg2d", 3: "tokens"}.get(out.dim(), "flatten")
    ids = not example.is_floating_point() and tuple(example.shape) == tuple(out.shape[:2])
    return "tokens-masked" if pool == "tokens" and ids and pad_id is not None else pool


@dataclass
class HeadInfo:
    """How the classifier was made: ``kind`` (finetune/probe), ``replaced`` (the model's own
    classifier was reset to the new class count), ``added`` (a LinearHead wraps the model)."""

    kind: str
    replaced: bool = False
    added: bool = False
    in_features: int | None = None
    classifier: str | None = None  # module path of the linear classifier
    probe: dict = field(default_factory=dict)


def attach_head(
    module: nn.Module,
    num_classes: int,
    head: str,
    example: torch.Tensor,
    current: int | None,
    pad_id: int | None = None,
) -> tuple[nn.Module, HeadInfo]:
    """Give ``module`` a classifier for ``num_classes`` classes.

    Keeps a classifier that already fits (finetune only). Otherwise replaces it: by timm's
    convention ``reset_classifier(n)`` where the model has it, else the last ``nn.Linear`` with
    ``current`` outputs (torchvision's ``fc``/``classifier.6``) if the model's output then has
    ``num_classes`` columns; failing both, it wraps the model in a LinearHead. Deterministic given
    the torch seed, so a saved model can be rebuilt and its state dict loaded. ``pad_id``: the
    pad id of a token-id ``example`` (a LinearHead then averages over real tokens only).
    """
    if head not in HEADS:
        raise StitchError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    info = HeadInfo(kind=head)
    paths = {m: n for n, m in module.named_modules()}
    if head == "finetune" and current == num_classes:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        info.classifier = paths[linears[-1]] if linears else None
        return module, info
    if callable(getattr(module, "reset_classifier", None)) and callable(
        getattr(module, "get_classifier", None)
    ):
        module.reset_classifier(num_classes)
        layer = module.get_classifier()
        if isinstance(layer, nn.Linear):
            info.replaced, info.in_features = True, layer.in_features
            info.classifier = {m: n for n, m in module.named_modules()}[layer]
            return module, info
        module.reset_classifier(0)  # classifier is not one Linear: use pooled features instead
    elif current is not None:
        path = _replace_last_linear(module, current, num_classes, example)
        if path is not None:
            layer = module.get_submodule(path)
            info.replaced, info.in_features, info.classifier = True, layer.in_features, path
            return module, info
    with torch.no_grad():
        out = module.eval()(example)
    pool = _pool_for(out, example, pad_id)
    in_features = (
        out.flatten(1).shape[1] if pool == "flatten" else out.shape[1 if pool == "avg2d" else -1]
    )
    info.added, info.in_features, info.classifier = True, int(in_features), "head"
    return LinearHead(module, int(in_features), num_classes, pool, pad_id or 0), info


def _replace_last_linear(
    module: nn.Module, current: int, num_classes: int, example: torch.Tensor
) -> str | None:
    """Swap the last Linear with ``current`` outputs for a fresh one; None (and no change) unless
    the model's output then has ``num_classes`` columns."""
    hits = [
        (n, m)
        for n, m in module.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == current
    ]
    if not hits:
        return None
    path, old = hits[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    try:
        with torch.no_grad():
            out = module.eval()(example)
        fits = isinstance(out, torch.Tensor) and tuple(out.shape) == (len(example), num_classes)
    except Exception:
        fits = False
    if not fits:
        setattr(parent, attr, old)
        return None
    return path


def classifier_of(module: nn.Module, info: HeadInfo) -> nn.Linear:
    """The linear layer a probe trains."""
    layer = module.get_submodule(info.classifier) if info.classifier else None
    if not isinstance(layer, nn.Linear):
        raise StitchError(f"{type(module).__name__} has no linear classifier to probe")
    return layer


# ----------------------------------------------------------------------------- building
def adapt_input_channels(module: nn.Module, in_chans: int, example: torch.Tensor) -> None:
    """Make the first convolution take ``in_chans`` channels instead of its current count.

    The first convolution is found by running ``example`` (the one executed first, not the first
    in attribute order). Weights are folded like timm's ``adapt_input_conv``: summed for one
    channel (grey images give the same response as grey repeated to RGB), otherwise cycled and
    rescaled, so pretrained weights stay meaningful.
    """
    first: list[tuple[str, nn.Conv2d]] = []
    names = {m: n for n, m in module.named_modules()}

    def hook(mod, _inputs):
        if not first:
            first.append((names[mod], mod))

    handles = [
        m.register_forward_pre_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for h in handles:
            h.remove()
    if not first:
        raise StitchError(f"--in-chans: {type(module).__name__} has no Conv2d input layer to adapt")
    path, conv = first[0]
    if conv.in_channels == in_chans:
        return
    if conv.groups != 1:
        raise StitchError(f"--in-chans: first convolution {path!r} is grouped; cannot adapt it")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)  # fmt: skip
    with torch.no_grad():
        w = conv.weight
        if in_chans == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            reps = math.ceil(in_chans / w.shape[1])
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)


def dataset_normalisation(data: DataSplits, channels: int) -> tuple[tuple, tuple]:
    """Per-channel mean/std of the training images in [0, 1], repeated for grey → colour."""
    x = data.train_x[:10_000].float()
    if data.train_x.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    if len(mean) != channels:
        mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Optimisation settings. ``lr``/``batch_size`` of None pick the documented defaults."""

    epochs: int = 3
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adam"
    seed: int = 0
    eval_batch_size: int = 256
    recalibrate_bn: bool = True
    progress: bool | None = None  # None: a bar only when stderr is a terminal

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise StitchError(f"unknown optimizer {self.optimizer!r}; expected adam or sgd")
        if self.epochs < 1:
            raise StitchError(f"--epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise StitchError(f"--lr must be a positive finite number, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 2:
            raise StitchError(f"--batch-size must be ≥ 2, got {self.batch_size}")

    def resolved_batch_size(self, n: int) -> int:
        if self.batch_size:
            return self.batch_size
        target = max(n // 25, 1)
        return int(min(128, max(32, 2 ** int(math.log2(target)))))


@dataclass
class TrainResult:
    """What training did: per-epoch history, final test accuracy, timings."""

    test_accuracy: float
    history: list[dict]
    seconds: float
    seconds_per_epoch: float | None
    batch_size: int | None
    lr: float | None
    optimizer: str
    probe: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(enabled: bool | None):
    """A rich progress bar on stderr; shown only on a terminal unless ``enabled`` says."""
    from rich import progress as rp
    from rich.console import Console

    console = Console(stderr=True)
    show = console.is_terminal if enabled is None else enabled
    return rp.Progress(
        rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
        rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[status]}"),
        console=console, disable=not show, transient=True,
    )  # fmt: skip


@torch.no_grad()
def predict(
    module: nn.Module, x, spec: InputSpec | ModelInput, batch_size: int = 256
) -> torch.Tensor:
    """Class predictions for raw dataset inputs (images or text), in eval mode."""
    inp = model_input(spec)
    module.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with inp.runtime.autocast():
            out.append(module(inp(x[i : i + batch_size])).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def evaluate(
    module: nn.Module, x, y: torch.Tensor, spec: InputSpec | ModelInput, batch_size: int = 256
) -> float:
    """Top-1 accuracy on raw dataset inputs (adapted to ``spec`` or tokenized, batch by batch)."""
    if len(y) == 0:
        return float("nan")
    return float((predict(module, x, spec, batch_size) == y).float().mean())


@torch.no_grad()
def recalibrate_batchnorm(
    module: nn.Module,
    x,
    spec: InputSpec | ModelInput,
    batch_size: int,
    limit: int = BN_RECALIBRATION_SAMPLES,
) -> bool:
    """Recompute BatchNorm running statistics as an exact average over up to ``limit`` samples."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    inp = model_input(spec)
    module.train()
    for i in range(0, min(len(x), limit), batch_size):
        chunk = x[i : min(i + batch_size, limit)]
        if len(chunk) > 1:
            with inp.runtime.autocast():
                module(inp(chunk))
    for m, momentum in saved:
        m.momentum = momentum
    module.eval()
    return True


def train_classifier(
    module: nn.Module,
    data: DataSplits,
    spec: InputSpec | ModelInput,
    config: TrainConfig,
    *,
    pretrained: bool = False,
    log: Log | None = stderr_log,
) -> TrainResult:
    """Train every parameter of ``module`` on ``data`` (cross-entropy), then test it.

    Returns per-epoch train loss/accuracy, test accuracy and seconds (training only; testing is
    timed apart). ``pretrained`` lowers the default learning rate for fine-tuning. The module
    is trained on the ModelInput's device and handed back on the CPU.
    """
    spec = model_input(spec)
    runtime = spec.runtime
    log = log or (lambda _msg: None)
    n = len(data.train_y)
    bs = config.resolved_batch_size(n)
    lr = config.lr or ((3e-4 if pretrained else 1e-3) if config.optimizer == "adam" else 0.05)
    module.to(runtime.device)
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_per_epoch * config.epochs)
    torch.manual_seed(config.seed)
    scaler = runtime.scaler()
    history = []
    progress = _progress(config.progress)
    with progress:
        for epoch in range(1, config.epochs + 1):
            task = progress.add_task(
                f"epoch {epoch}/{config.epochs}", total=steps_per_epoch, status=""
            )
            module.train()
            start = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            for xb, yb in _batches(
                data.train_x, data.train_y, bs, shuffle=True, seed=config.seed * 1000 + epoch
            ):
                if len(yb) < 2:  # BatchNorm cannot train on a single sample
                    continue
                inputs, yb = spec(xb), runtime.to(yb)
                with runtime.autocast():
                    logits = module(inputs)
                loss = F.cross_entropy(logits.float(), yb)
                if not torch.isfinite(loss):
                    raise StitchError(
                        f"training diverged at epoch {epoch} (loss {loss.item()}); try a lower --lr"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                progress.update(task, advance=1, status=f"loss {loss_sum / seen:.3f}")
            seconds = time.perf_counter() - start
            progress.remove_task(task)
            row = {"epoch": epoch, "loss": round(loss_sum / max(seen, 1), 5),
                   "train_accuracy": round(correct / max(seen, 1), 5),
                   "seconds": round(seconds, 2)}  # fmt: skip
            if epoch < config.epochs:
                row["test_accuracy"] = round(
                    evaluate(module, data.test_x, data.test_y, spec, config.eval_batch_size), 5
                )
            history.append(row)
            if epoch < config.epochs:
                log(
                    f"epoch {epoch}/{config.epochs}: loss {row['loss']:.4f}, train acc {row['train_accuracy']:.4f}, "
                    f"test acc {row['test_accuracy']:.4f}, {seconds:.1f} s"
                )
    if config.recalibrate_bn:
        g = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(n, generator=g)[:BN_RECALIBRATION_SAMPLES]
        recalibrate_batchnorm(module, subset(data.train_x, order), spec, bs)
    module.eval()
    acc = evaluate(module, data.test_x, data.test_y, spec, config.eval_batch_size)
    module.to("cpu")
    last = history[-1]
    last["test_accuracy"] = round(acc, 5)
    log(
        f"epoch {last['epoch']}/{config.epochs}: loss {last['loss']:.4f}, train acc {last['train_accuracy']:.4f}, "
        f"test acc {acc:.4f}, {last['seconds']:.1f} s"
    )
    total = sum(r["seconds"] for r in history)
    return TrainResult(test_accuracy=acc, history=history, seconds=round(total, 2),
                       seconds_per_epoch=round(total / len(history), 2), batch_size=bs, lr=lr,
                       optimizer=config.optimizer)  # fmt: skip


# ----------------------------------------------------------------------------- linear probe
@torch.no_grad()
def _features(module: nn.Module, layer: nn.Linear, x, inp: ModelInput, bs: int) -> torch.Tensor:
    """Inputs of ``layer`` for every sample (fp32, on the CPU), captured while running the
    frozen model."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().flatten(1).float().cpu())
    )
    try:
        module.eval()
        for i in range(0, len(x), bs):
            with inp.runtime.autocast():
                module(inp(x[i : i + bs]))
    finally:
        handle.remove()
    return torch.cat(captured)


def fit_linear_probe(
    module: nn.Module,
    head: HeadInfo,
    data: DataSplits,
    spec: InputSpec | ModelInput,
    *,
    l2: float = 1e-3,
    max_iter: int = 300,
    batch_size: int = 256,
    log: Log | None = stderr_log,
) -> TrainResult:
    """Freeze ``module`` and fit its classifier (``head.classifier``) on cached features.

    Multinomial logistic regression by full-batch L-BFGS on standardised features with an L2
    penalty, folded back into the linear layer; deterministic and free of learning-rate choices.
    Features are computed on ``runtime``'s device; the fit runs in fp32 on the CPU.
    """
    log = log or (lambda _msg: None)
    layer = classifier_of(module, head)
    for p in module.parameters():
        p.requires_grad_(False)
    start = time.perf_counter()
    spec = model_input(spec)
    module.to(spec.runtime.device)
    feats = _features(module, layer, data.train_x, spec, batch_size)
    extract_s = time.perf_counter() - start
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mean) / std
    w = torch.zeros(layer.out_features, z.shape[1], requires_grad=True)
    b = torch.zeros(layer.out_features, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    y = data.train_y

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scaled = w / std
        bias = b - scaled @ mean
        layer.weight.copy_(scaled)
        layer.bias.copy_(bias)
        logits = feats @ scaled.T + bias
        loss = float(F.cross_entropy(logits, y))
        train_acc = float((logits.argmax(1) == y).float().mean())
    seconds = time.perf_counter() - start
    acc = evaluate(module, data.test_x, data.test_y, spec, batch_size)
    module.to("cpu")
    log(
        f"linear probe on {feats.shape[1]} features: train acc {train_acc:.4f}, test acc {acc:.4f}, {seconds:.1f} s"
    )
    row = {"epoch": 1, "loss": round(loss, 5), "train_accuracy": round(train_acc, 5),
           "test_accuracy": round(acc, 5), "seconds": round(seconds, 2)}  # fmt: skip
    probe = {"features": int(feats.shape[1]), "l2": l2, "max_iter": max_iter,
             "feature_seconds": round(extract_s, 2)}  # fmt: skip
    return TrainResult(test_accuracy=acc, history=[row], seconds=round(seconds, 2),
                       seconds_per_epoch=None, batch_size=None, lr=None, optimizer="lbfgs",
                       probe=probe)  # fmt: skip


__all__ = [
    "HEADS",
    "HeadInfo",
    "LinearHead",
    "TrainConfig",
    "TrainResult",
    "adapt_input_channels",
    "attach_head",
    "classifier_of",
    "dataset_normalisation",
    "ModelInput",
    "evaluate",
    "fit_linear_probe",
    "model_input",
    "predict",
    "recalibrate_batchnorm",
    "train_classifier",
]
