"""The recomposition invariant across architectures: for every default cut the engine lists,
``suffix(prefix(x)) == model(x)`` (same dtype, allclose 1e-5), at the example's batch size and at
another one, and the suffix leaves the activation it is handed untouched.

Models are timm's smallest variant of each family (random weights) and torchvision models
handed in as plain ``nn.Module``s with an example input. Inputs are as small as each model
allows, and a few deep models are made shallower, to keep the survey to about a minute or two.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from stitchcore import Cutter

# name, input size, timm.create_model kwargs (small inputs / fewer blocks), expected default
# cuts: (first cut = the stem, number of cuts). The slowest families to verify here
# (legacy_xception, nf_regnet, tiny_vit: 1-2.5 min each) are left to benchmarks/cut_survey.py,
# which checks one model of every timm model module (86 at the last run).
TIMM_MODELS = [
    ("resnet18", 32, {}, ("act1", 5)),
    ("resnetv2_18", 32, {}, ("stem.conv", 5)),
    ("convnext_atto", 32, {}, ("stem", 5)),
    ("efficientnet_b0", 32, {}, ("bn1", 6)),
    ("mobilenetv3_small_050", 32, {}, ("bn1", 5)),
    ("regnetx_002", 32, {}, ("stem", 5)),
    ("vit_tiny_patch16_224", 32, {"img_size": 32, "depth": 4}, ("norm_pre", 5)),
    ("deit_tiny_distilled_patch16_224", 32, {"img_size": 32, "depth": 3}, ("norm_pre", 4)),
    ("swin_tiny_patch4_window7_224", 64, {"img_size": 64, "window_size": 2}, ("patch_embed", 5)),
    ("levit_128s", 64, {"img_size": 64}, ("transpose", 4)),
    ("mixer_s32_224", 64, {"img_size": 64}, ("stem", 9)),
    ("poolformer_s12", 32, {}, ("stem", 5)),
    ("densenet121", 32, {}, ("features.norm0", 5)),
    ("inception_v3", 75, {}, ("Conv2d_2b_3x3", 5)),
    ("dla46_c", 32, {}, ("base_layer", 7)),
    ("ghostnet_050", 32, {}, ("conv_stem", 5)),
    ("repvgg_a0", 32, {}, ("stem", 5)),
    ("cait_xxs24_224", 32, {"img_size": 32, "depth": 4}, ("pos_drop", 5)),
    ("beit_base_patch16_224", 32, {"img_size": 32, "depth": 2}, ("pos_drop", 3)),
    ("maxvit_nano_rw_256", 64, {"img_size": 64}, ("stem", 5)),
    ("rexnet_100", 32, {}, ("stem", 6)),
    ("edgenext_xx_small", 64, {}, ("stem", 5)),
    ("mobilevit_xxs", 64, {}, ("stem", 6)),
    ("twins_svt_small", 64, {"img_size": 64}, ("pos_drops.0", 5)),  # feature_info: block.N
    ("convit_tiny", 64, {"img_size": 64, "depth": 4, "local_up_to_layer": 2}, ("pos_drop", 5)),
    ("focalnet_tiny_srf", 64, {}, ("stem", 5)),
    ("coatnet_nano_rw_224", 64, {"img_size": 64}, ("stem", 5)),
    ("pit_ti_224", 64, {"img_size": 64}, ("pos_drop", 2)),  # stages return (x, cls) tuples
]


def _example(size: int, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=gen)


def assert_recomposes(model, prefix, suffix, x: torch.Tensor) -> None:
    """suffix(prefix(x)) == model(x), same dtype, and the activation is left untouched."""
    with torch.no_grad():
        want = model(x)
        act = prefix(x)
        before = act.clone()
        got = suffix(act)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(act, before), "the suffix modified its input"


def _check_default_cuts(model, x, expected: tuple[str, int] | None = None) -> list:
    cutter = Cutter(model, example_input=x)
    assert cutter.backend.graph.backend == "fx", cutter.backend.graph.trace_errors
    cuts = cutter.cuts()
    assert [c.index for c in cuts] == sorted({c.index for c in cuts}), "cuts out of order"
    if expected is not None:
        assert (cuts[0].name, len(cuts)) == expected, [c.name for c in cuts]
    other_batch = torch.cat([x, x.flip(0)])[:1]  # one sample: not the example's batch size
    for cut in cuts:
        prefix, suffix = cutter.backend.split(cut)
        assert_recomposes(model, prefix, suffix, x)
        assert_recomposes(model, prefix, suffix, other_batch)
        with torch.no_grad():
            act = prefix(x)
        assert tuple(act.shape[1:]) == cut.spec.shape
        assert str(act.dtype).removeprefix("torch.") == cut.spec.dtype
    return cuts


@pytest.mark.parametrize(
    ("name", "size", "kwargs", "expected"), TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS]
)
def test_timm_default_cuts_recompose(name, size, kwargs, expected):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    _check_default_cuts(model, _example(size), expected)


def test_survey_covers_25_families():
    from timm.models import is_model_in_modules

    modules = {
        module
        for module in timm.list_modules()
        for name, *_ in TIMM_MODELS
        if is_model_in_modules(name, [module])
    }
    assert len(modules) >= 25, sorted(modules)


TORCHVISION_MODELS = [
    ("resnet18", 32, {}, ("maxpool", 5)),
    ("vgg11", 32, {}, ("features.2", 5)),
    ("mobilenet_v3_small", 32, {}, ("features.0", 13)),
]


@pytest.mark.parametrize(
    ("name", "size", "kwargs", "expected"),
    TORCHVISION_MODELS,
    ids=[m[0] for m in TORCHVISION_MODELS],
)
def test_torchvision_plain_modules_recompose(name, size, kwargs, expected):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(**kwargs).eval()
    if name.startswith("vgg"):  # VGG's 120M-parameter head only costs time here
        model.classifier = torch.nn.Sequential(torch.nn.Linear(512 * 7 * 7, 10))
    _check_default_cuts(model, _example(size), expected)


def test_every_cut_of_resnet_recomposes():
    """``all=True``: every valid node, verified in one pass, each split checked again here."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = _example(32)
    cutter = Cutter(model, example_input=x)
    cuts = cutter.cuts(all=True)
    blocks = [f"layer{i}.{j}.{op}" for i in range(1, 5) for j in (0, 1) for op in ("add", "act2")]
    # nothing inside a residual block (the skip crosses it), everything between blocks
    assert [c.name for c in cuts] == [
        *("conv1", "bn1", "act1", "maxpool"),
        *blocks,
        *("global_pool.pool", "global_pool.flatten", "fc"),
    ]
    for cut in cuts:
        assert_recomposes(model, *cutter.backend.split(cut), x)


def test_every_cut_of_a_vit_recomposes():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2).eval()
    x = _example(32)
    cutter = Cutter(model, example_input=x)
    cuts = cutter.cuts(all=True)
    assert len(cuts) >= 10
    for cut in cuts:
        assert_recomposes(model, *cutter.backend.split(cut), x[:1])


# ----------------------------------------------------------------------------- specs
def _spec(model, x, name):
    return Cutter(model, example_input=x).resolve(name).spec


def test_swin_stages_are_nhwc():
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2)
    cutter = Cutter(model.eval(), example_input=_example(64))
    specs = {c.name: c.spec for c in cutter.cuts()}
    assert specs["layers.1"].layout == "nhwc"
    assert specs["layers.1"].shape == (8, 8, 192)
    assert specs["layers.1"].spatial == (8, 8) and specs["layers.1"].channels == 192
    # the patch convolution inside the stem is still channels-first
    conv = cutter.resolve("patch_embed.proj").spec
    assert (conv.layout, conv.shape) == ("nchw", (96, 16, 16))


def test_vit_tokens_carry_their_class_token():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2).eval()
    x = _example(32)
    block = _spec(model, x, "blocks.1")
    assert (block.layout, block.shape, block.prefix_tokens) == ("tokens", (5, 192), 1)
    assert block.spatial == (2, 2)
    patches = _spec(model, x, "patch_embed")  # before the class token is prepended
    assert (patches.layout, patches.shape, patches.prefix_tokens) == ("tokens", (4, 192), 0)


def test_distilled_deit_has_two_prefix_tokens():
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1).eval()
    spec = _spec(model, _example(32), "blocks.0")
    assert (spec.shape, spec.prefix_tokens) == ((6, 192), 2)


def test_pooled_features_are_vectors():
    model = timm.create_model("resnet18", pretrained=False).eval()
    spec = _spec(model, _example(32), "global_pool")
    assert (spec.layout, spec.shape, spec.dtype) == ("vector", (512,), "float32")
    assert spec.spatial is None and spec.channels == 512


def test_feature_map_spec_matches_activation():
    model = timm.create_model("resnet18", pretrained=False).eval()
    spec = _spec(model, _example(32), "layer2")
    assert (spec.layout, spec.shape, spec.spatial, spec.channels) == (
        "nchw",
        (128, 4, 4),
        (4, 4),
        128,
    )
