"""The example plugin, tested the way its users would: installed, found, used by name."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import stitchcore
from stitchcore.plugin import StitchError, resolve_family
from stitchcore.plugin import registry as plugins


def test_the_plugin_manager_finds_the_family():
    assert "lowrank" in plugins.families()
    row = next(r for r in plugins.plugin_report() if r["name"] == "lowrank")
    assert row["package"] == "stitchcore-lowrank"
    assert row["families"] == ["lowrank"]
    assert row["hooks"] == ["register_stitch_families"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def activations():
    """Two randomly initialised timm ResNet-18s cut at layer2, fed 32×32 digits."""
    digits = load_digits()
    x = torch.tensor(digits.images[:160], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    cut = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
        prefix, suffix = stitchcore.split(model, "layer2", example_input=x[:2])
        with torch.no_grad():
            cut[seed] = (prefix(x), suffix, model(x))
    return cut


def test_lowrank_stitches_two_resnets(activations):
    sender, _, _ = activations[0]
    receiver, suffix, logits = activations[1]
    spec = stitchcore.ActivationSpec(tuple(sender.shape[1:]), "nchw")
    family, _ = resolve_family("lowrank", spec, spec)
    errors = {}
    for rank in (2, 32):
        stitch = family.build(spec, spec, rank=rank)
        random_err = F.mse_loss(stitch(sender[120:]), receiver[120:]).item()
        family.init(stitch, sender[:120], receiver[:120])
        errors[rank] = F.mse_loss(stitch(sender[120:]), receiver[120:]).item()
        assert errors[rank] < 0.5 * random_err
    assert errors[32] < errors[2]  # more rank, better fit
    with torch.no_grad():  # the stitched network runs end to end
        assert suffix(stitch(sender)).shape == logits.shape


def test_lowrank_trains_and_refuses_with_reasons(activations):
    sender, _, _ = activations[0]
    receiver, _, _ = activations[1]
    spec = stitchcore.ActivationSpec(tuple(sender.shape[1:]), "nchw")
    family = plugins.get_family("lowrank")
    torch.manual_seed(0)
    stitch = family.build(spec, spec, rank=8)
    opt = torch.optim.Adam(stitch.parameters(), lr=1e-2)
    before = F.mse_loss(stitch(sender), receiver).item()
    for _ in range(20):
        loss = F.mse_loss(stitch(sender), receiver)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * before
    smaller = stitchcore.ActivationSpec((spec.shape[0], 2, 2), "nchw")
    with pytest.raises(StitchError, match="positions differ"):
        family.build(spec, smaller)
    with pytest.raises(StitchError, match="rank must be between 1 and 128"):
        family.build(spec, spec, rank=500)
    assert resolve_family("auto", spec, spec)[0].name != "lowrank"  # never chosen by auto
