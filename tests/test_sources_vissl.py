"""The ``vissl:`` source: VISSL / torchvision-layout ResNet-50 checkpoints → a torchvision trunk.

Checkpoints are synthetic but laid out exactly as published ones (VISSL's nested
``classy_state_dict`` with ``_feature_blocks.*`` keys; Barlow Twins / VICReg torchvision keys),
built from a seeded random torchvision ResNet-50; the converted trunk must reproduce its outputs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from stitchcore import list_cuts, load_model, split
from stitchcore.errors import OfflineError, StitchError, UnknownNameError
from stitchcore.weights import hub_checkpoint_path

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference():
    """A random torchvision ResNet-50 (with its fc), its trunk outputs on X, and its state."""
    torch.manual_seed(123)
    model = resnet50().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc = nn.Identity()
    with torch.no_grad():
        out = model(X)
    return state, out


def _trunk_keys(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _vissl_layout(state: dict) -> dict:
    """A VISSL training checkpoint: trunk under classy_state_dict.base_model.model.trunk with
    ``_feature_blocks.`` keys, heads beside it, and training bookkeeping around it."""
    trunk = {f"_feature_blocks.{k}": v for k, v in _trunk_keys(state).items()}
    heads = {
        "0.clf.0.weight": torch.randn(128, 2048),
        "0.clf.0.bias": torch.zeros(128),
    }
    return {
        "phase_idx": 799,
        "iteration_num": 1000,
        "type": "checkpoint",
        "loss": {"temperature": torch.tensor(0.1)},
        "classy_state_dict": {
            "train": True,
            "base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
            "optimizer": {"param_groups": [{"lr": 0.3, "momentum": 0.9}]},
        },
    }


def _outputs(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.module(X)


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_vissl_training_checkpoint_converts_exactly(reference, tmp_path):
    state, out = reference
    path = _save(_vissl_layout(state), tmp_path / "model_final_checkpoint_phase799.torch")
    loaded = load_model(f"vissl:{path}")
    assert torch.equal(_outputs(loaded), out)
    assert isinstance(loaded.module.fc, nn.Identity)
    assert loaded.num_classes is None
    assert loaded.meta["layout"] == "vissl"
    assert loaded.meta["tensors"] == 318
    assert loaded.input.shape == (3, 224, 224)
    assert loaded.input.mean == (0.485, 0.456, 0.406)


def test_named_model_with_local_file(reference, tmp_path):
    state, out = reference
    path = _save(_vissl_layout(state), tmp_path / "simclr.torch")
    loaded = load_model(f"vissl:simclr-rn50@{path}")
    assert loaded.meta["method"] == "simclr-rn50"
    assert torch.equal(_outputs(loaded), out)
    assert load_model(f"vissl:simclr@{path}").meta["method"] == "simclr-rn50"  # alias


def test_model_state_dict_layout_with_ddp_prefix(reference, tmp_path):
    state, out = reference
    trunk = {f"module.trunk._feature_blocks.{k}": v for k, v in _trunk_keys(state).items()}
    trunk["module.heads.0.projection.weight"] = torch.zeros(128, 2048)
    path = _save({"model_state_dict": trunk}, tmp_path / "exported.torch")
    loaded = load_model(f"vissl:{path}")
    assert loaded.meta["layout"] == "vissl-model_state_dict"
    assert loaded.meta["dropped_keys"] == 1
    assert torch.equal(_outputs(loaded), out)


def test_torchvision_layout_loads(reference, tmp_path):
    """Barlow Twins / VICReg publish torchvision keys without fc; a supervised checkpoint with
    fc loads too (the classifier is dropped), as does one without num_batches_tracked."""
    state, out = reference
    no_fc = _save(_trunk_keys(state), tmp_path / "barlow.pth")
    assert torch.equal(_outputs(load_model(f"vissl:barlowtwins-rn50@{no_fc}")), out)
    with_fc = _save(state, tmp_path / "supervised.pth")
    loaded = load_model(f"vissl:{with_fc}")
    assert loaded.meta["dropped_keys"] == 2
    assert torch.equal(_outputs(loaded), out)
    lean = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(_outputs(load_model(f"vissl:{_save(lean, tmp_path / 'lean.pth')}")), out)


def test_unexpected_layout_names_the_keys(reference, tmp_path):
    state, _ = reference
    odd = {f"_feature_blocks.{k}": v for k, v in _trunk_keys(state).items()}
    odd["_feature_blocks.layer5.0.conv1.weight"] = torch.zeros(1)
    path = _save(odd, tmp_path / "odd.torch")
    with pytest.raises(StitchError, match=r"odd\.torch.*unexpected layer5\.0\.conv1\.weight"):
        load_model(f"vissl:{path}")
    timm_like = _save({"conv_stem.weight": torch.zeros(3)}, tmp_path / "timm.pth")
    with pytest.raises(StitchError, match=r"missing .*unexpected conv_stem\.weight"):
        load_model(f"vissl:{timm_like}")


def test_wrong_architecture_is_a_shape_mismatch(tmp_path):
    from torchvision.models import resnet18

    path = _save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(StitchError, match=r"ResNet-50 trunk.*(missing|shape mismatch)"):
        load_model(f"vissl:{path}")


def test_broken_nesting_is_explained(tmp_path):
    path = _save({"classy_state_dict": {"base_model": {}}}, tmp_path / "broken.torch")
    with pytest.raises(StitchError, match="no base_model.model.trunk"):
        load_model(f"vissl:{path}")


class _Payload:
    """Not on torch's allow-list: unpickling it would mean running arbitrary code."""


def test_unsafe_pickle_is_refused(tmp_path):
    path = _save({"classy_state_dict": _Payload()}, tmp_path / "evil.torch")
    with pytest.raises(StitchError, match=r"evil\.torch: refusing to unpickle.*_Payload"):
        load_model(f"vissl:{path}")


def test_pretrained_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("STITCHCORE_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"vissl:swav-rn50.*vissl:swav-rn50@PATH"):
        load_model("vissl:swav-rn50")


def test_pretrained_read_from_the_hub_cache_under_its_own_name(reference, tmp_path, monkeypatch):
    """SimCLR, SwAV and PIRL URLs share the basename model_final_checkpoint_phase799.torch;
    each is cached under its own name, so one never stands in for another."""
    from stitchcore_vissl import CHECKPOINTS, cache_file_name

    state, out = reference
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("STITCHCORE_OFFLINE", "1")
    names = {cache_file_name(n, c.url) for n, c in CHECKPOINTS.items()}
    assert len(names) == len(CHECKPOINTS)
    url = CHECKPOINTS["pirl-rn50"].url
    path = hub_checkpoint_path(url, cache_file_name("pirl-rn50", url))
    path.parent.mkdir(parents=True)
    _save(_vissl_layout(state), path)
    loaded = load_model("vissl:pirl")
    assert loaded.spec == "vissl:pirl-rn50@pretrained"
    assert torch.equal(_outputs(loaded), out)
    with pytest.raises(OfflineError):
        load_model("vissl:swav-rn50")


def test_random_control_is_reproducible_and_cuts_at_stages():
    a = load_model("vissl:mocov2-rn50@random")
    b = load_model("vissl:mocov2-rn50@random")
    assert torch.equal(_outputs(a), _outputs(b))
    assert not torch.equal(_outputs(a), _outputs(load_model("vissl:mocov2-rn50@random-1")))
    cuts = list_cuts(a, example_input=X)
    assert [c.name for c in cuts][-5:] == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert cuts[-1].spec.shape == (2048, 2, 2)
    prefix, suffix = split(a, "layer3", example_input=X)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(X)), _outputs(a), atol=1e-5)


def test_bad_names():
    with pytest.raises(UnknownNameError, match="simclr-rn50"):
        load_model("vissl:simclr-r50")
    with pytest.raises(StitchError, match="no such checkpoint file"):
        load_model("vissl:/nonexistent/model.torch")
    with pytest.raises(StitchError, match="no such checkpoint file"):
        load_model("vissl:vicreg@/nonexistent/resnet50.pth")


def test_cli_reads_a_local_checkpoint_as_it_is(reference, tmp_path):
    """``stitch cuts/split vissl:PATH`` load the file itself: no ``@random`` is added to a spec
    naming a local checkpoint (``vissl:PATH@random`` is refused: a file takes no @WEIGHTS)."""
    from click.testing import CliRunner

    from stitchcore.cli import cli

    state, _ = reference
    path = _save(_vissl_layout(state), tmp_path / "model_final_checkpoint_phase799.torch")
    runner = CliRunner()
    listed = runner.invoke(cli, ["cuts", f"vissl:{path}", "--json"])
    assert listed.exit_code == 0, listed.output
    names = [c["name"] for c in json.loads(listed.stdout)["cuts"]]
    assert names == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    split_ = runner.invoke(cli, ["split", f"vissl:{path}", "layer2", "--json"])
    assert split_.exit_code == 0, split_.output
    assert json.loads(split_.stdout)["recomposes_other_batch"] is True
    missing = runner.invoke(cli, ["split", f"vissl:{tmp_path / 'gone.pth'}", "layer2"])
    assert missing.exit_code == 2
    assert missing.stderr.strip().endswith(f"no such checkpoint file: {tmp_path / 'gone.pth'}")


def test_cli_error_for_an_unreadable_checkpoint_is_its_only_line(tmp_path):
    """A plain pickle makes torch warn (pickle protocol) and then refuse: the user sees one
    line, the refusal, and exit code 2 (a real process: warnings go to its stderr)."""
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": [1.0]}, f, protocol=4)
    stitch = Path(sys.executable).with_name("stitch")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(stitch), "cuts", f"vissl:{path}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: plain.pkl: not a checkpoint torch.load(weights_only=True) can read (Unsupported "
        "operand 149); save the weights with torch.save(model.state_dict()) or as safetensors"
    ]
