"""The standard stitch families (plugins/stitchcore_families) and the least-squares solver.

Real components throughout: timm models with random weights, cut by stitchcore, fed with
scikit-learn's digits (8×8 images upsampled to 32×32, three channels). Activations are computed
once per module; every check is small (a few hundred samples, seconds in all).
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import stitchcore
from stitchcore import plugins
from stitchcore.errors import StitchError
from stitchcore.families import resolve_family
from stitchcore.linalg import LeastSquares, lstsq_with_bias
from stitchcore.spec import ActivationSpec

N_FIT, N_TEST = 192, 64
RESNET_CUTS = ["layer1", "layer2", "layer3", "layer4", "global_pool"]
VIT_CUTS = ["blocks.1", "blocks.2"]
SWIN_CUTS = ["layers.0", "layers.1"]


# ----------------------------------------------------------------------------- fixtures
def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32) / 16.0
    x = F.interpolate(x[:, None], size=32, mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5, torch.tensor(d.target[:n])


def _resnet(seed: int):
    torch.manual_seed(seed)
    # zero_init_last=False: otherwise random residual blocks start as identities and every
    # random ResNet is trivially a linear function of every other.
    return timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()


def _vit(seed: int):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4
    ).eval()


def _swin(seed: int):
    torch.manual_seed(seed)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=32,
        window_size=2,
        depths=(1, 1, 1, 1),
        embed_dim=48,
        num_heads=(2, 4, 8, 16),
    ).eval()


class Model:
    """A model, its Cutter, and its activations (and specs) at some cuts on the digits."""

    def __init__(self, module, cuts: list[str], x: torch.Tensor) -> None:
        self.module = module
        self.cutter = stitchcore.Cutter(module, example_input=x[:2])
        resolved = [self.cutter.resolve(c) for c in cuts]
        self.spec = {c: r.spec for c, r in zip(cuts, resolved)}
        with torch.no_grad():
            outs = self.cutter.extractor(resolved)(x)
        self.acts = dict(zip(cuts, outs))


@pytest.fixture(scope="module")
def data():
    return _digits(N_FIT + N_TEST)


@pytest.fixture(scope="module")
def zoo(data):
    x, _ = data
    return {
        "r0": Model(_resnet(0), RESNET_CUTS, x),
        "r1": Model(_resnet(1), RESNET_CUTS, x),
        "v0": Model(_vit(2), VIT_CUTS, x),
        "v1": Model(_vit(3), VIT_CUTS, x),
        "s0": Model(_swin(4), SWIN_CUTS, x),
    }


def pair(zoo, sender: str, receiver: str):
    """(sender spec, receiver spec, sender acts, receiver acts) for 'model:cut' names."""
    (sm, sc), (rm, rc) = sender.split(":"), receiver.split(":")
    s, r = zoo[sm], zoo[rm]
    return s.spec[sc], r.spec[rc], s.acts[sc], r.acts[rc]


def mse(stitch, x, y) -> float:
    with torch.no_grad():
        return F.mse_loss(stitch(x), y).item()


# One real pair per trainable family (sender model:cut, receiver model:cut, family).
FAMILY_PAIRS = [
    ("r0:layer2", "r1:layer2", "conv1x1"),  # 128×4×4 → 128×4×4
    ("r0:layer1", "r1:layer2", "strided_conv"),  # 64×8×8 → 128×4×4 (k = 2)
    ("r0:layer3", "r1:layer2", "subpixel_conv"),  # 256×2×2 → 128×4×4 (k = 2)
    ("v0:blocks.1", "v1:blocks.2", "token_linear"),  # ViT → ViT, 17×192 tokens
    ("r0:layer1", "v1:blocks.1", "token_linear"),  # CNN → ViT, 8×8 map → 4×4 grid + class
    ("v0:blocks.2", "r1:layer1", "token_linear"),  # ViT → CNN, 4×4 grid → 8×8 map
    ("v0:blocks.2", "r1:layer3", "token_linear"),  # ViT → CNN, 4×4 grid → 2×2 map
    ("s0:layers.1", "r1:layer2", "conv1x1"),  # nhwc 4×4×96 → nchw
    ("r0:layer1", "s0:layers.0", "conv1x1"),  # nchw → nhwc 8×8×48
    ("s0:layers.1", "v1:blocks.1", "token_linear"),  # nhwc → tokens
    ("v0:blocks.2", "s0:layers.1", "token_linear"),  # tokens → nhwc
    ("r0:layer3", "r1:global_pool", "linear"),  # map → vector (average pooled)
    ("v0:blocks.2", "r1:global_pool", "linear"),  # tokens → vector (class token)
    ("r0:global_pool", "r1:global_pool", "linear"),  # vector → vector
]
PAIR_IDS = [f"{f}-{s}-{r}" for s, r, f in FAMILY_PAIRS]


# ----------------------------------------------------------------------------- registry
def test_plugin_registers_the_standard_families():
    report = {row["name"]: row for row in plugins.plugin_report()}
    assert report["families"]["families"] == sorted(
        [
            "conv1x1",
            "strided_conv",
            "subpixel_conv",
            "upsample_conv",
            "token_linear",
            "linear",
            "permutation",
        ]  # fmt: skip
    )
    fams = plugins.families()
    assert fams["permutation"].trainable is False
    assert fams["permutation"].auto_priority is None
    for name in ("conv1x1", "strided_conv", "subpixel_conv", "upsample_conv", "token_linear",
                 "linear"):  # fmt: skip
        assert fams[name].trainable and fams[name].has_closed_form, name


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("sender,receiver,family", FAMILY_PAIRS, ids=PAIR_IDS)
def test_auto_picks_family_and_stitch_maps_shapes(zoo, sender, receiver, family):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, sender, receiver)
    fam, why = resolve_family("auto", s_spec, r_spec)
    assert fam.name == family, why
    stitch = fam.build(s_spec, r_spec)
    for train in (True, False):
        stitch.train(train)
        out = stitch(s_acts[:8])
        assert out.shape == r_acts[:8].shape
        if r_spec.layout == "nhwc":  # suffixes may .view() what they are handed
            assert out.is_contiguous()


# ----------------------------------------------------------------------------- lstsq init
@pytest.mark.parametrize("sender,receiver,family", FAMILY_PAIRS, ids=PAIR_IDS)
def test_lstsq_init_beats_random_init_and_holds_in_both_modes(zoo, sender, receiver, family):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, sender, receiver)
    fam = plugins.get_family(family)
    fit, test = slice(0, N_FIT), slice(N_FIT, None)
    torch.manual_seed(0)
    stitch = fam.build(s_spec, r_spec).eval()
    random_err = mse(stitch, s_acts[test], r_acts[test])
    with torch.no_grad():
        fam.init(stitch, s_acts[fit], r_acts[fit])
    stitch.eval()
    lstsq_err = mse(stitch, s_acts[test], r_acts[test])  # held-out samples
    assert lstsq_err < 0.2 * random_err, (lstsq_err, random_err)
    assert lstsq_err < r_acts[test].var().item(), "worse than predicting the mean"
    # The fitted map holds in train mode too: BatchNorm's batch statistics on the fitted sample
    # are the statistics the fit stored, so one batch of it gives the eval-mode output...
    with torch.no_grad():
        eval_out = stitch(s_acts[fit])
        stitch.train()
        train_out = stitch(s_acts[fit])
    assert F.mse_loss(train_out, eval_out).item() < 1e-8 * r_acts.var().item()
    # ...and on a smaller batch of unseen samples it stays far better than a random stitch.
    with torch.no_grad():
        assert F.mse_loss(stitch(s_acts[test]), r_acts[test]).item() < 0.3 * random_err


def test_lstsq_init_recovers_an_exact_linear_relation(zoo):
    """Receiver = a known affine map of the sender's real activations: the fit is exact in both
    modes (up to float32), which pins down the BatchNorm bookkeeping."""
    s_spec, _, s_acts, _ = pair(zoo, "r0:layer2", "r1:layer2")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=gen) / 128**0.5
    b = torch.randn(96, generator=gen)
    target = torch.einsum("oc,nchw->nohw", w, s_acts) + b[:, None, None]
    r_spec = ActivationSpec((96, *s_spec.shape[1:]), "nchw")
    fam = plugins.get_family("conv1x1")
    stitch = fam.build(s_spec, r_spec, ridge=0)
    fam.init(stitch, s_acts, target)
    scale = target.var().item()
    stitch.eval()
    assert mse(stitch, s_acts, target) < 1e-8 * scale
    stitch.train()
    assert mse(stitch, s_acts, target) < 1e-8 * scale  # whole sample = one batch: exact


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("sender,receiver,family", FAMILY_PAIRS, ids=PAIR_IDS)
def test_a_few_adam_steps_reduce_the_matching_loss(zoo, sender, receiver, family):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, sender, receiver)
    fam = plugins.get_family(family)
    torch.manual_seed(0)
    stitch = fam.build(s_spec, r_spec)
    opt = torch.optim.Adam(stitch.parameters(), lr=1e-2)
    x, y = s_acts[:N_FIT], r_acts[:N_FIT]
    stitch.train()  # the loss being trained: batch statistics, measured on the whole fit set

    def loss_now() -> float:
        with torch.no_grad():
            return F.mse_loss(stitch(x), y).item()

    before = loss_now()
    for step in range(20):
        idx = torch.arange(step * 32, step * 32 + 32) % N_FIT
        loss = F.mse_loss(stitch(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.7 * before, (before, after)


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize(
    "model,cut,family",
    [
        ("r0", "layer2", "conv1x1"),
        ("v0", "blocks.1", "token_linear"),
        ("r0", "global_pool", "linear"),
        ("r0", "layer3", "permutation"),
        ("s0", "layers.1", "conv1x1"),
    ],
)
def test_identity_init_between_copies_reproduces_the_receiver(zoo, data, model, cut, family):
    """Cut two copies of one model at the same place: prefix → identity stitch → suffix gives
    the receiver's activation and the model's own output (Hernandez et al.'s sanity check)."""
    x, _ = data
    x = x[:16]
    m = zoo[model]
    receiver = copy.deepcopy(m.module)
    prefix, _ = m.cutter.split(cut)
    _, suffix = stitchcore.Cutter(receiver, example_input=x[:2]).split(cut)
    spec = m.spec[cut]
    fam = plugins.get_family(family)
    stitch = fam.build(spec, spec)
    fam.init_identity(stitch)
    stitch.eval()
    with torch.no_grad():
        act = prefix(x)
        assert torch.allclose(stitch(act), m.acts[cut][:16], atol=1e-5, rtol=1e-5)
        assert torch.allclose(suffix(stitch(act)), receiver(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,cut", [("conv1x1", "layer2"), ("linear", "layer3")])
def test_identity_init_holds_in_train_mode_too(zoo, family, cut):
    """Without data the BatchNorm statistics are calibrated on the first train batch; with data
    (``sender_acts``) they are set at once. Either way train and eval mode give the identity."""
    spec_in = zoo["r0"].spec[cut]
    acts = zoo["r0"].acts[cut][:64]
    spec_out = spec_in if family == "conv1x1" else ActivationSpec((spec_in.channels,), "vector")
    expect = acts if family == "conv1x1" else acts.mean(dim=(2, 3))
    fam = plugins.get_family(family)

    pending = fam.build(spec_in, spec_out)
    fam.init_identity(pending)
    pending.train()
    with torch.no_grad():
        first = pending(acts)  # calibrates here
    assert torch.allclose(first, expect, atol=1e-4)
    pending.eval()
    with torch.no_grad():
        assert torch.allclose(pending(acts), expect, atol=1e-4)

    fitted = fam.build(spec_in, spec_out)
    fam.init_identity(fitted, sender_acts=acts)
    for train in (False, True):  # (a train-mode forward then moves the running statistics)
        fitted.train(train)
        with torch.no_grad():
            assert torch.allclose(fitted(acts), expect, atol=1e-4)


def test_identity_init_refuses_unequal_widths(zoo):
    s_spec, r_spec, _, _ = pair(zoo, "r0:layer1", "r1:layer1")
    wider = ActivationSpec((128, *r_spec.shape[1:]), "nchw")
    fam = plugins.get_family("conv1x1")
    with pytest.raises(StitchError, match="identity needs equal widths, got 64 → 128"):
        fam.init_identity(fam.build(s_spec, wider))
    with pytest.raises(StitchError, match="no identity init"):
        s2, r2, _, _ = pair(zoo, "r0:layer1", "r1:layer2")
        strided = plugins.get_family("strided_conv")
        strided.init_identity(strided.build(s2, r2))


# ----------------------------------------------------------------------------- permutation
@pytest.mark.parametrize("model,cut", [("r0", "layer2"), ("v0", "blocks.2"), ("s0", "layers.1")])
def test_permutation_recovers_a_known_channel_shuffle_exactly(zoo, model, cut):
    spec, acts = zoo[model].spec[cut], zoo[model].acts[cut]
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(spec.channels, generator=gen)
    dim = 1 if spec.layout == "nchw" else acts.dim() - 1
    shuffled = acts.index_select(dim, perm)
    fam = plugins.get_family("permutation")
    stitch = fam.build(spec, spec)
    fam.init(stitch, acts[:N_FIT], shuffled[:N_FIT])
    assert torch.equal(stitch.index, perm)
    assert torch.equal(stitch(acts[N_FIT:]), shuffled[N_FIT:])


def test_permutation_between_layouts_and_state_dict_roundtrip(zoo):
    """nchw sender, the same map stored nhwc by the receiver: matching works across layouts and
    the fitted permutation survives a state-dict round trip (how stitches are saved)."""
    spec, acts = zoo["r0"].spec["layer3"], zoo["r0"].acts["layer3"]
    perm = torch.randperm(spec.channels, generator=torch.Generator().manual_seed(2))
    target = acts.index_select(1, perm).permute(0, 2, 3, 1).contiguous()
    r_spec = ActivationSpec(tuple(target.shape[1:]), "nhwc")
    fam = plugins.get_family("permutation")
    stitch = fam.build(spec, r_spec)
    fam.init(stitch, acts, target)
    again = fam.build(spec, r_spec)
    again.load_state_dict(stitch.state_dict())
    assert torch.equal(again(acts), target)


# ----------------------------------------------------------------------------- refusals
REFUSALS = [
    # family, sender spec, receiver spec, words the reason must contain
    ("conv1x1", ((64, 8, 8), "nchw"), ((64, 4, 4), "nchw"), "spatial sizes differ (8×8 → 4×4)"),
    ("conv1x1", ((17, 192), "tokens", 1), ((64, 4, 4), "nchw"), "token_linear handles tokens"),
    ("strided_conv", ((64, 9, 9), "nchw"), ((64, 4, 4), "nchw"), "not an integer multiple"),
    ("strided_conv", ((64, 4, 4), "nchw"), ((64, 4, 4), "nchw"), "use conv1x1"),
    ("upsample_conv", ((64, 8, 8), "nchw"), ((64, 4, 4), "nchw"), "not an integer multiple"),
    ("token_linear", ((64, 8, 8), "nchw"), ((64, 8, 8), "nchw"), "neither side is a token"),
    ("token_linear", ((17, 192), "tokens", 1), ((192,), "vector"), "a vector has no token grid"),
    ("linear", ((512,), "vector"), ((512, 2, 2), "nchw"), "nothing can recover a map"),
    ("linear", ((3, 5, 7, 9), "other"), ((10,), "vector"), "cannot be pooled"),
    ("permutation", ((64, 8, 8), "nchw"), ((128, 8, 8), "nchw"), "equal widths, got 64 → 128"),
    ("permutation", ((64, 8, 8), "nchw"), ((64, 4, 4), "nchw"), "cannot resize"),
    ("permutation", ((17, 64), "tokens", 1), ((64, 4, 4), "nchw"), "maps like to like"),
]


def _spec(args) -> ActivationSpec:
    shape, layout, *prefix = args
    return ActivationSpec(shape, layout, prefix_tokens=prefix[0] if prefix else 0)


@pytest.mark.parametrize("family,sender,receiver,reason", REFUSALS)
def test_refusals_carry_reasons(family, sender, receiver, reason):
    s, r = _spec(sender), _spec(receiver)
    fam = plugins.get_family(family)
    assert reason in fam.accepts(s, r)
    with pytest.raises(StitchError, match="cannot stitch") as err:
        fam.build(s, r)
    assert reason in str(err.value)
    with pytest.raises(StitchError) as err:  # the core adds the families that could
        resolve_family(family, s, r)
    assert reason in str(err.value) and (
        "families that can" in str(err.value) or "no family" in str(err.value)
    )


def test_bad_options_and_misused_stitches_are_clear_errors(zoo):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, "r0:layer2", "v1:blocks.1")
    fam = plugins.get_family("token_linear")
    with pytest.raises(StitchError, match=r"no option prefx \(options: prefix, resample, ridge\)"):
        fam.build(s_spec, r_spec, prefx="pool")
    with pytest.raises(StitchError, match="choose from auto, map, pool, learn"):
        fam.build(s_spec, r_spec, prefix="cls")
    with pytest.raises(StitchError, match="prefix='map' needs equal prefix-token counts"):
        fam.build(s_spec, r_spec, prefix="map")
    with pytest.raises(StitchError, match=r"ridge='-1': expected a number ≥ 0"):
        fam.build(s_spec, r_spec, ridge="-1")
    with pytest.raises(StitchError, match="expected true or false"):
        plugins.get_family("conv1x1").build(r_spec, r_spec, batchnorm="maybe")
    stitch = fam.build(s_spec, r_spec)
    with pytest.raises(StitchError, match="sender activations have per-sample shape"):
        fam.init(stitch, r_acts, r_acts)
    with pytest.raises(StitchError, match="cannot initialise a ConvStitch"):
        conv = plugins.get_family("conv1x1")
        fam.init(conv.build(*pair(zoo, "r0:layer2", "r1:layer2")[:2]), s_acts, r_acts)
    with pytest.raises(StitchError, match="pool='prefix' needs tokens with a class"):
        plugins.get_family("linear").build(
            *pair(zoo, "r0:layer3", "r1:global_pool")[:2], pool="prefix"
        )


# ----------------------------------------------------------------------------- auto
AUTO = [
    (((64, 8, 8), "nchw"), ((128, 8, 8), "nchw"), "conv1x1"),
    (((8, 8, 64), "nhwc"), ((128, 8, 8), "nchw"), "conv1x1"),
    (((64, 16, 16), "nchw"), ((128, 8, 8), "nchw"), "strided_conv"),
    (((64, 16, 12), "nchw"), ((128, 4, 4), "nchw"), "strided_conv"),  # 4× by 3×
    (((64, 4, 4), "nchw"), ((128, 16, 16), "nchw"), "subpixel_conv"),
    (((17, 192), "tokens", 1), ((50, 384), "tokens", 1), "token_linear"),
    (((64, 8, 8), "nchw"), ((17, 192), "tokens", 1), "token_linear"),
    (((17, 192), "tokens", 1), ((64, 8, 8), "nchw"), "token_linear"),
    (((4, 4, 96), "nhwc"), ((17, 192), "tokens", 1), "token_linear"),
    (((512,), "vector"), ((256,), "vector"), "linear"),
    (((512, 2, 2), "nchw"), ((256,), "vector"), "linear"),
    (((17, 192), "tokens", 1), ((256,), "vector"), "linear"),
]


@pytest.mark.parametrize("sender,receiver,family", AUTO)
def test_auto_choices(sender, receiver, family):
    fam, why = resolve_family("auto", _spec(sender), _spec(receiver))
    assert fam.name == family, why


def test_auto_never_picks_permutation_and_explains_impossible_pairs():
    same = _spec(((64, 8, 8), "nchw"))
    assert resolve_family("auto", same, same)[0].name == "conv1x1"
    with pytest.raises(StitchError, match="no stitch family can stitch 512 vector → 64×8×8 nchw"):
        resolve_family("auto", _spec(((512,), "vector")), same)
    with pytest.raises(StitchError, match="no stitch family can stitch .*7×7 nchw"):
        resolve_family("auto", _spec(((64, 9, 9), "nchw")), _spec(((64, 7, 7), "nchw")))


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("prefix", ["map", "pool", "learn"])
def test_token_prefix_policies(zoo, prefix):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, "v0:blocks.1", "v1:blocks.2")
    fam = plugins.get_family("token_linear")
    stitch = fam.build(s_spec, r_spec, prefix=prefix)
    assert stitch.prefix == prefix
    fam.init(stitch, s_acts[:N_FIT], r_acts[:N_FIT])
    out = stitch(s_acts[N_FIT:])
    assert out.shape == r_acts[N_FIT:].shape
    cls_err = F.mse_loss(out[:, 0], r_acts[N_FIT:, 0]).item()
    mean_err = F.mse_loss(r_acts[:N_FIT, 0].mean(0).expand_as(out[:, 0]), r_acts[N_FIT:, 0])
    # learn = the mean class token; map and pool predict it from the input, and do better
    assert cls_err <= mean_err.item() * (1.0001 if prefix == "learn" else 0.5)


@pytest.mark.parametrize("resample", ["area", "bilinear", "nearest"])
def test_token_resampling_modes(zoo, resample):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, "r0:layer1", "v1:blocks.1")  # 16×16 → 4×4 grid
    fam = plugins.get_family("token_linear")
    stitch = fam.build(s_spec, r_spec, resample=resample)
    fam.init(stitch, s_acts[:N_FIT], r_acts[:N_FIT])
    assert mse(stitch, s_acts[N_FIT:], r_acts[N_FIT:]) < r_acts[N_FIT:].var().item()


@pytest.mark.parametrize(
    "family,pair_names",
    [("conv1x1", ("r0:layer2", "r1:layer2")), ("linear", ("r0:layer3", "r1:global_pool"))],
)
def test_without_batchnorm_lstsq_is_a_plain_affine_fit(zoo, family, pair_names):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, *pair_names)
    fam = plugins.get_family(family)
    plain = fam.build(s_spec, r_spec, batchnorm="false", ridge=0)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    fam.init(plain, s_acts[:N_FIT], r_acts[:N_FIT])
    sandwich = fam.build(s_spec, r_spec, ridge="0")
    fam.init(sandwich, s_acts[:N_FIT], r_acts[:N_FIT])
    plain.eval()
    sandwich.eval()
    # the same least-squares problem, parametrised two ways: the same predictions where it is
    # determined (the fitted samples; ``linear`` has more inputs than samples here)
    with torch.no_grad():
        a, b = plain(s_acts[:N_FIT]), sandwich(s_acts[:N_FIT])
    assert torch.allclose(a, b, atol=1e-3 * r_acts.abs().max().item())


def test_linear_flatten_pool_widens_the_input(zoo):
    s_spec, r_spec, s_acts, r_acts = pair(zoo, "r0:layer3", "r1:global_pool")  # 256×2×2
    fam = plugins.get_family("linear")
    stitch = fam.build(s_spec, r_spec, pool="flatten")
    assert stitch.linear.in_features == 256 * 2 * 2
    fam.init(stitch, s_acts[:N_FIT], r_acts[:N_FIT])
    assert mse(stitch.eval(), s_acts[N_FIT:], r_acts[N_FIT:]) < r_acts[N_FIT:].var().item()


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize(
    "sender,receiver",
    [("r0:layer2", "v1:blocks.1"), ("v0:blocks.2", "r1:layer3")],
    ids=["cnn-vit", "vit-cnn"],
)
def test_cnn_vit_pairs_stitch_end_to_end(zoo, data, sender, receiver):
    """prefix(sender) → token_linear → suffix(receiver): the stitched model runs, and after
    the lstsq init its logits are far closer to the receiver's own than with a random stitch."""
    x, _ = data
    (sm, sc), (rm, rc) = sender.split(":"), receiver.split(":")
    prefix, _ = zoo[sm].cutter.split(sc)
    _, suffix = zoo[rm].cutter.split(rc)
    s_spec, r_spec, s_acts, r_acts = pair(zoo, sender, receiver)
    fam, _ = resolve_family("auto", s_spec, r_spec)
    assert fam.name == "token_linear"
    torch.manual_seed(0)
    stitch = fam.build(s_spec, r_spec).eval()
    test_x = x[N_FIT:]
    with torch.no_grad():
        own = zoo[rm].module(test_x)
        random_logits = suffix(stitch(prefix(test_x)))
        fam.init(stitch, s_acts[:N_FIT], r_acts[:N_FIT])
        fitted_logits = suffix(stitch(prefix(test_x)))
    assert fitted_logits.shape == own.shape == (N_TEST, 1000)
    assert F.mse_loss(fitted_logits, own) < 0.5 * F.mse_loss(random_logits, own)


# ----------------------------------------------------------------------------- linalg
def test_lstsq_with_bias_recovers_an_affine_map_with_a_large_offset():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 20, generator=gen, dtype=torch.float64) + 1e4  # large offset
    w = torch.randn(7, 20, generator=gen, dtype=torch.float64)
    b = torch.randn(7, generator=gen, dtype=torch.float64)
    y = x @ w.T + b
    fit = lstsq_with_bias(x.float(), y.float(), chunk_rows=777)  # several chunks, float32 in
    assert fit.ridge == 0.0 and fit.rows == 5000
    assert torch.allclose(fit.weight, w, atol=5e-3)
    assert torch.allclose(fit.predict(x), y, rtol=1e-5, atol=1e-2 * y.std().item())
    assert torch.allclose(fit.linear_mean + fit.bias, y.mean(0), rtol=1e-5)


def test_lstsq_falls_back_to_ridge_when_ill_conditioned():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 10, generator=gen)
    x = torch.cat([x, x[:, :3]], dim=1)  # duplicated columns: singular covariance
    y = x[:, :2] * 3 - 1
    fit = lstsq_with_bias(x, y)
    assert fit.ridge > 0
    assert torch.isfinite(fit.weight).all()
    assert torch.allclose(fit.predict(x.double()), y.double(), atol=1e-4)
    few = lstsq_with_bias(torch.randn(5, 40, generator=gen), torch.randn(5, 3, generator=gen))
    assert few.ridge > 0 and torch.isfinite(few.weight).all()  # fewer rows than features


def test_least_squares_chunks_equal_one_shot():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 6, generator=gen), torch.randn(300, 2, generator=gen)
    ls = LeastSquares()
    for i in range(0, 300, 70):
        ls.add(x[i : i + 70], y[i : i + 70])
    a, b = ls.solve(), lstsq_with_bias(x, y)
    ref = torch.linalg.lstsq(torch.cat([x, torch.ones(300, 1)], 1).double(), y.double()).solution
    assert torch.allclose(a.weight, b.weight) and torch.allclose(a.bias, b.bias)
    assert torch.allclose(a.weight.T, ref[:6], atol=1e-10)
    assert torch.allclose(a.bias, ref[6], atol=1e-10)


def test_upsample_fit_on_block_means_equals_the_fit_on_upsampled_rows(zoo):
    # upsample_conv fits sender positions to the receiver's k×k block means (k² fewer rows);
    # the solution must be the one the explicit nearest-upsampled rows give.
    s_spec, r_spec, xs, ys = pair(zoo, "r0:layer3", "r1:layer1")  # 256×2×2 → 64×8×8, k = 4
    fam = plugins.get_family("upsample_conv")
    stitch = fam.build(s_spec, r_spec)
    fam.init(stitch, xs[:N_FIT], ys[:N_FIT])
    stitch.eval()
    with torch.no_grad():
        x_up = F.interpolate(stitch.bn_in(xs[:N_FIT]), scale_factor=4, mode="nearest")
    rows = x_up.permute(0, 2, 3, 1).reshape(-1, s_spec.channels)
    targets = ys[:N_FIT].permute(0, 2, 3, 1).reshape(-1, r_spec.channels)
    ref = lstsq_with_bias(rows, targets, ridge=stitch.ridge)
    weight = stitch.conv.weight.detach().flatten(1).double()
    # float32 products on both sides: equal to 1e-3 of the largest weight (a misaligned block
    # or a missing factor moves the weights by far more)
    assert (weight - ref.weight).abs().max() < 1e-3 * ref.weight.abs().max()
    assert torch.allclose(stitch.bn_out.running_mean.double(), ref.linear_mean, atol=1e-4)
    with torch.no_grad():
        got = stitch(xs[:N_FIT]).permute(0, 2, 3, 1).reshape(-1, r_spec.channels)
    assert torch.allclose(got.double(), ref.predict(rows.double()), atol=1e-3)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_wide_least_squares_is_solved_in_the_dual_and_equals_the_ridge_solution(dtype, tol):
    # products in the input's precision: exact for float64 rows, to float32 rounding otherwise
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(120, 400, generator=gen) * 2 + 3).to(dtype)  # fewer rows than features
    y = x[:, :5] @ torch.randn(5, 6, generator=gen).to(dtype) + 1
    ls = LeastSquares()
    for i in range(0, 120, 50):
        ls.add(x[i : i + 50], y[i : i + 50])
    assert ls._sxx is None  # rows kept, no 400 × 400 sums
    fit = ls.solve(ridge=1e-3)
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    cov = xc.T @ xc / 120
    primal = torch.linalg.solve(
        cov + fit.ridge * torch.eye(400, dtype=torch.float64), xc.T @ yc / 120
    )
    assert fit.ridge == pytest.approx(1e-3 * cov.diagonal().mean().item(), rel=1e-6)
    assert torch.allclose(fit.weight, primal.T, atol=tol)
    assert torch.allclose(fit.bias, (y.mean(0) - fit.weight @ x.mean(0)), atol=tol)
    var = torch.einsum("oi,ij,oj->o", fit.weight, cov, fit.weight)
    assert torch.allclose(fit.linear_var, var, rtol=100 * tol)


def test_subpixel_conv_recovers_a_per_sub_position_map_that_upsample_conv_cannot():
    """A receiver map that is a different linear function of the sender at each of the k×k
    sub-positions: subpixel_conv's least squares recovers it (to the ridge); upsample_conv, whose
    output is constant over each block, cannot."""
    from stitchcore.plugins import get_family
    from stitchcore.spec import ActivationSpec

    s, r = ActivationSpec((8, 4, 4), "nchw"), ActivationSpec((6, 8, 8), "nchw")
    sub, up = get_family("subpixel_conv"), get_family("upsample_conv")
    torch.manual_seed(0)
    with torch.no_grad():
        truth = sub.build(s, r, batchnorm=False, kernel=1)
        for p in truth.parameters():
            p.normal_()
        x = torch.randn(200, 8, 4, 4) * 3 + 1
        y = truth(x)
        fitted, blocky = sub.build(s, r, kernel=1), up.build(s, r)
        sub.init(fitted, x, y)
        up.init(blocky, x, y)
        fitted.eval()
        blocky.eval()
        scale = float(y.abs().mean())
        assert float((fitted(x) - y).abs().max()) < 1e-2 * scale
        assert float((blocky(x) - y).abs().mean()) > 0.3 * scale
        fitted.train()  # the closed form holds in train mode too (BatchNorm set to the data)
        assert float((fitted(x) - y).abs().max()) < 1e-2 * scale


@pytest.mark.parametrize("size, kernel", [((1, 1), (1, 1)), ((2, 2), (3, 3)), ((1, 4), (1, 3))])
def test_subpixel_conv_leaves_out_taps_that_only_see_padding(size, kernel):
    """A 3×3 tap further from the centre than the sender's map is wide multiplies only zero
    padding: the kernel is cut to the map (layer4 → act1 of a ResNet at 32 px: 512×1×1 →
    64×16×16 holds 8 M weights instead of 75 M), and the closed form is the same function."""
    from stitchcore.plugins import get_family
    from stitchcore.spec import ActivationSpec

    s, r = ActivationSpec((5, *size), "nchw"), ActivationSpec((3, 4 * size[0], 4 * size[1]), "nchw")
    family = get_family("subpixel_conv")
    assert family.build(s, r).conv.kernel_size == kernel
    stitch = family.build(s, r, batchnorm=False)  # zero padding means the same with and without
    torch.manual_seed(0)
    x = torch.randn(300, *s.shape)
    full = torch.nn.Conv2d(5, 3 * 16, 3, padding=1)  # every tap of a 3×3 kernel, then ×4 shuffle
    with torch.no_grad():
        y = torch.nn.functional.pixel_shuffle(full(x), 4)
        family.init(stitch, x, y)
        stitch.eval()
        assert float((stitch(x) - y).abs().max()) < 1e-2 * float(y.abs().mean())


@pytest.mark.parametrize(
    "family,pair_names",
    [
        ("conv1x1", ("r0:layer2", "r1:layer2")),
        ("strided_conv", ("r0:layer1", "r1:layer2")),
        ("upsample_conv", ("r0:layer3", "r1:layer1")),
        ("conv1x1", ("s0:layers.1", "r1:layer2")),  # nhwc sender
    ],
)
def test_conv_stitches_fold_the_input_norm_into_the_conv_exactly_and_skip_its_input_gradient(
    zoo, family, pair_names
):
    """bn_in's affine is folded into the convolution (ConvStitch.forward): the same outputs,
    parameter gradients and running statistics as bn_out(conv(upsample(bn_in(x)))) run module by
    module, in train and eval mode; and a training step does the convolution's arithmetic twice
    (forward, weight gradient), not three times (no input gradient for a frozen sender)."""
    from torch.utils.flop_counter import FlopCounterMode

    s_spec, r_spec, xs, ys = pair(zoo, *pair_names)
    fam = plugins.get_family(family)
    stitch = fam.build(s_spec, r_spec)
    fam.init(stitch, xs[:N_FIT], ys[:N_FIT])
    torch.manual_seed(0)
    with torch.no_grad():  # away from the fitted values: every term of the fold matters
        for bn in (stitch.bn_in, stitch.bn_out):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    ref = copy.deepcopy(stitch)

    def composed(x):
        x = x.permute(0, 3, 1, 2) if s_spec.layout == "nhwc" else x
        z = ref.bn_out(ref.conv(ref.upsample(ref.bn_in(x))))
        return z.permute(0, 2, 3, 1) if r_spec.layout == "nhwc" else z

    x = xs[:32]
    for train in (True, True, False):
        stitch.train(train)
        ref.train(train)
        a, b = stitch(x), composed(x)
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max().item()), (a - b).abs().max()
        g = torch.randn_like(a)
        grads = torch.autograd.grad(a, list(stitch.parameters()), g)
        ref_grads = torch.autograd.grad(b, list(ref.parameters()), g)
        # (train mode: bn_out cancels bn_in's bias, whose gradient is 0 up to rounding, so the
        # tolerance is on the scale of the largest gradient)
        scale = max(want.abs().max().item() for want in ref_grads)
        for (name, _), got, want in zip(stitch.named_parameters(), grads, ref_grads):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-5 * scale), name
        for name, buf in stitch.named_buffers():
            want = dict(ref.named_buffers())[name].float()
            assert torch.allclose(buf.float(), want, atol=1e-5 * want.abs().max().item()), name

    stitch.train()

    def conv_flops(module, run) -> tuple[int, int]:
        with FlopCounterMode(display=False) as fwd:
            out = run(x)
        with FlopCounterMode(display=False) as bwd:
            out.backward(torch.ones_like(out))
        return fwd.get_total_flops(), bwd.get_total_flops()

    fwd, bwd = conv_flops(stitch, stitch)
    assert fwd > 0 and bwd <= 1.01 * fwd, (fwd, bwd)  # the weight gradient only
    fwd_ref, bwd_ref = conv_flops(ref, composed)
    assert bwd_ref >= 1.9 * fwd_ref  # module by module: the input gradient as well
