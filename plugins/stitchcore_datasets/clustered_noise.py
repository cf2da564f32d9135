"""``clustered-noise``: Smith & Marcu's synthetic "Noise" data, stitched in place of a sender.

In the paper (Section 4.2, Appendix A, Algorithms 1–2) this is a dataset of *activations*, not
images: one random point per class in the activation space of the cut (``rand``, uniform in
[0, 1)), and each sample is its class point plus Gaussian noise, clamped to [0, 1]. Train and
test share the class points; it must be regenerated for each cut shape. Shown to a receiver
through a trained stitch, it reaches the receiver's accuracy although it holds no image
information at all.

Variant grammar: ``SHAPE[,noise=F][,train=N][,test=N][,classes=K][,seed=S]`` where ``SHAPE`` is
the per-sample activation shape, e.g. ``64x7x7`` (ResNet-18 before layer 2 at 28 px), ``197x192``
(ViT tokens) or ``512``. ``train``/``test`` count samples *per class*. The paper uses 6000/1000
per class and does not state its noise scale; the defaults here (600/100, noise 0.1) keep memory
small on a CPU; pass ``train=6000,test=1000`` for the paper's sizes. ``meta["kind"]`` is
``"activations"``: feed ``train_x`` to the stitch directly, never through ``adapt()``.
"""

from __future__ import annotations

import torch

from stitchcore.plugin import Dataset, DataSplits, StitchError

__all__ = ["ClusteredNoise", "generate", "parse_variant"]

USAGE = "clustered-noise needs an activation shape: --data clustered-noise:64x7x7[,noise=0.1]"
DEFAULTS = {"noise": 0.1, "train": 600, "test": 100, "classes": 10, "seed": 0}
MAX_VALUES = 2**28  # 1 GiB of float32 per split: beyond this, ask for fewer samples


def parse_variant(variant: str) -> tuple[tuple[int, ...], dict]:
    """``(shape, options)`` from ``SHAPE[,key=value...]``."""
    head, *rest = [p.strip() for p in variant.split(",")]
    try:
        shape = tuple(int(d) for d in head.lower().split("x"))
    except ValueError:
        raise StitchError(f"bad activation shape {head!r}; {USAGE}") from None
    if not shape or min(shape) < 1:
        raise StitchError(f"bad activation shape {head!r}; {USAGE}")
    opts = dict(DEFAULTS)
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise StitchError(
                f"bad clustered-noise option {item!r}; known: {', '.join(DEFAULTS)} (KEY=VALUE)"
            )
        try:
            opts[key] = float(value) if key == "noise" else int(value)
        except ValueError:
            raise StitchError(
                f"clustered-noise option {key} needs a number, got {value!r}"
            ) from None
    if opts["noise"] < 0 or min(opts["train"], opts["test"], opts["classes"]) < 1:
        raise StitchError("clustered-noise: noise must be >= 0 and train/test/classes >= 1")
    return shape, opts


def generate(
    shape: tuple[int, ...],
    *,
    noise: float = 0.1,
    train: int = 600,
    test: int = 100,
    classes: int = 10,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Class-blocked (unshuffled, as in the paper) train/test activations and labels."""
    per_sample = 1
    for d in shape:
        per_sample *= d
    if classes * max(train, test) * per_sample > MAX_VALUES:
        raise StitchError(
            f"clustered-noise {'x'.join(map(str, shape))} with {classes}×{max(train, test)} "
            "samples exceeds 1 GiB per split; pass a smaller train=N/test=N"
        )
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand((classes, *shape), generator=gen)
    out = {}
    for split, per_class in (("train", train), ("test", test)):
        y = torch.arange(classes).repeat_interleave(per_class)
        x = centres[y] + noise * torch.randn((len(y), *shape), generator=gen)
        out[f"{split}_x"], out[f"{split}_y"] = x.clamp_(0, 1), y
    return out


class ClusteredNoise(Dataset):
    name = "clustered-noise"
    description = "Smith & Marcu's clustered random noise: synthetic activations of a given shape"
    variants = ("SHAPE[,KEY=VALUE...]",)

    def load(self, variant: str | None = None) -> DataSplits:
        if not variant:
            raise StitchError(USAGE)
        shape, opts = parse_variant(variant)
        data = generate(shape, **opts)
        k = opts["classes"]
        return DataSplits(
            name=f"clustered-noise:{variant}",
            train_x=data["train_x"],
            train_y=data["train_y"],
            test_x=data["test_x"],
            test_y=data["test_y"],
            num_classes=k,
            classes=[f"cluster {i}" for i in range(k)],
            meta={"kind": "activations", "shape": list(shape), **opts},
        )
