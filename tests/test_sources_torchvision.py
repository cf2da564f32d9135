"""The ``torchvision:`` source: specs, weights (cache, offline, local files), hints and cuts.

Real torchvision models at small inputs; pretrained weights are exercised through a private
torch hub cache (TORCH_HOME in a temp dir), since the test machine is offline.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth

from stitchcore import list_cuts, load_model, plugins, split
from stitchcore.errors import OfflineError, StitchError, UnknownNameError
from stitchcore.graph import TracerPolicy
from stitchcore.weights import hub_checkpoint_path

SMALL = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, private torch hub cache, and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STITCHCORE_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sources_registered():
    assert {"torchvision", "vissl", "effnet-lite"} <= set(plugins.sources())


def test_random_resnet18_loads_with_imagenet_input_spec():
    loaded = load_model("torchvision:resnet18@random")
    assert loaded.spec == "torchvision:resnet18@random"
    assert isinstance(loaded.module, torchvision.models.ResNet)
    assert not loaded.module.training
    assert loaded.input.shape == (3, 224, 224)
    assert loaded.input.mean == (0.485, 0.456, 0.406)
    assert loaded.input.std == (0.229, 0.224, 0.225)
    assert loaded.num_classes == 1000
    assert loaded.hints.cuts == ["maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_random_seeds_are_reproducible():
    a = load_model("torchvision:resnet18@random").module
    b = load_model("torchvision:resnet18@random").module
    c = load_model("torchvision:resnet18@random-1").module
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_resnet18_default_cuts_and_split_recompose():
    loaded = load_model("torchvision:resnet18@random")
    cuts = list_cuts(loaded, example_input=SMALL)
    names = [c.name for c in cuts]
    assert names[-5:] == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert [c.spec.shape for c in cuts[-4:]] == [
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]
    prefix, suffix = split(loaded, "layer2", example_input=SMALL)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(SMALL)), loaded.module(SMALL), atol=1e-5)


def test_vgg11_cuts_after_each_max_pool():
    loaded = load_model("torchvision:vgg11@random")
    names = [c.name for c in list_cuts(loaded, example_input=SMALL[:, :, :32, :32])]
    assert names == ["features.2", "features.5", "features.10", "features.15", "features.20"]


def test_mobilenet_v3_small_cuts_every_feature_block():
    loaded = load_model("torchvision:mobilenet_v3_small@random")
    cuts = list_cuts(loaded, example_input=SMALL)
    assert [c.name for c in cuts] == [f"features.{i}" for i in range(13)]
    assert cuts[-1].spec.shape == (576, 2, 2)


def test_torchvision_ops_modules_are_leaves():
    policy = TracerPolicy.merge(
        plugins.call_all("tracer_policy", model=torchvision.models.mobilenet_v3_small())
    )
    for cls in (Conv2dNormActivation, SqueezeExcitation, StochasticDepth):
        assert cls in policy.leaf_modules
    # …so the graph never goes inside them: no cut inside the stem's Conv2dNormActivation.
    loaded = load_model("torchvision:mobilenet_v3_small@random")
    every = [c.name for c in list_cuts(loaded, all=True, example_input=SMALL)]
    assert "features.0" in every
    assert not [n for n in every if n.startswith("features.0.")]


def test_model_hints_for_a_bare_torchvision_module():
    with torch.device("meta"):  # hints need the structure only, not initialised weights
        squeezenet = torchvision.models.squeezenet1_1()
        vit = torchvision.models.vit_b_32()
        swin = torchvision.models.swin_t()
    hints = plugins.call_first("model_hints", model=squeezenet)
    assert hints.cuts[0] == "features.2"  # the stem's max-pool, then Fire modules and pools
    assert hints.input.shape == (3, 224, 224)
    vit_hints = plugins.call_first("model_hints", model=vit)
    assert vit_hints.prefix_tokens == 1
    assert vit_hints.cuts[0] == "encoder.dropout" and len(vit_hints.cuts) == 13
    assert plugins.call_first("model_hints", model=swin).spatial_layout == "nhwc"


def test_cli_cuts_resnet18():
    from stitchcore.cli import commands  # noqa: F401  (registers the subcommands)
    from stitchcore.cli.main import cli

    result = CliRunner().invoke(cli, ["cuts", "torchvision:resnet18", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = [c["name"] for c in data["cuts"]]
    assert names[-5:] == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert data["cuts"][-1]["shape"] == [512, 7, 7]


def test_pretrained_offline_and_not_cached_fails_at_once(hub_cache):
    start = time.perf_counter()
    with pytest.raises(OfflineError, match=r"torchvision:resnet18@pretrained.*torch hub cache"):
        load_model("torchvision:resnet18")
    with pytest.raises(OfflineError, match="@random"):
        load_model("torchvision:resnet18@IMAGENET1K_V1")
    assert time.perf_counter() - start < 5


def test_pretrained_read_from_the_hub_cache(hub_cache):
    reference = load_model("torchvision:resnet18@random-7").module
    entry = torchvision.models.ResNet18_Weights.DEFAULT
    path = hub_checkpoint_path(entry.url)
    assert path.parent == hub_cache
    hub_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    loaded = load_model("torchvision:resnet18")
    assert loaded.spec == "torchvision:resnet18@pretrained"
    assert loaded.meta["weights_entry"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert _same_weights(loaded.module, reference)


def test_cached_file_that_needs_arbitrary_code_is_refused(hub_cache):
    hub_cache.mkdir(parents=True)
    entry = torchvision.models.ResNet18_Weights.DEFAULT
    torch.save({"payload": _Unsafe()}, hub_checkpoint_path(entry.url))
    with pytest.raises(StitchError, match=r"refusing to unpickle.*_Unsafe"):
        load_model("torchvision:resnet18")


class _Unsafe:
    """Any class outside torch's allow-list: unpickling it would run arbitrary code."""


def test_weights_from_a_local_file(tmp_path):
    reference = load_model("torchvision:resnet18@random-3").module
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = load_model(f"torchvision:resnet18@{path}")
    assert _same_weights(loaded.module, reference)


def test_local_file_that_does_not_fit_names_the_keys(tmp_path):
    state = load_model("torchvision:resnet18@random").module.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(StitchError, match=r"missing fc\.bias.*unexpected extra\.weight"):
        load_model(f"torchvision:resnet18@{path}")


def test_bad_names_and_weights():
    with pytest.raises(UnknownNameError, match="resnet18"):
        load_model("torchvision:resnet19")
    with pytest.raises(StitchError, match=r"no such weights file.*IMAGENET1K_V1"):
        load_model("torchvision:resnet18@/nonexistent/weights.pth")
