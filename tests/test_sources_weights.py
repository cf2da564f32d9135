"""The shared weights helpers that model sources build on (stitchcore/weights.py)."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stitchcore.errors import OfflineError, StitchError
from stitchcore.weights import (
    cached_download,
    hub_checkpoint_path,
    is_offline,
    load_state_dict_checked,
    random_seed,
    read_checkpoint,
    refuse_unsafe_pickles,
    seeded,
)


@pytest.mark.parametrize(
    ("weights", "seed"),
    [
        ("random", 0),
        ("random-0", 0),
        ("random-42", 42),
        ("pretrained", None),
        (None, None),
        ("random-x", None),
        ("/tmp/random", None),
    ],
)
def test_random_seed(weights, seed):
    assert random_seed(weights) == seed


def test_seeded_is_reproducible_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    with seeded(5):
        a = torch.randn(3)
    with seeded(5):
        b = torch.randn(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_read_checkpoint_keeps_nesting_and_reads_safetensors(tmp_path):
    nested = {"outer": {"inner": torch.ones(2)}, "step": 3}
    torch.save(nested, tmp_path / "n.pth")
    got = read_checkpoint(tmp_path / "n.pth")
    assert got["step"] == 3 and torch.equal(got["outer"]["inner"], torch.ones(2))
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    assert read_checkpoint(tmp_path / "w.safetensors")["w"].shape == (2, 2)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StitchError, match="junk.safetensors: not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")


def test_checked_load_allows_only_the_optional_keys_to_be_missing():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    state = {k: torch.full_like(v, 3) for k, v in model.state_dict().items()}
    del state["1.num_batches_tracked"]
    with pytest.raises(StitchError, match=r"net does not fit Sequential: missing 1\.num_batches"):
        load_state_dict_checked(model, state, "net")
    load_state_dict_checked(model, state, "net", optional=["1.num_batches_tracked"])
    assert torch.equal(model[0].weight, torch.full_like(model[0].weight, 3))
    state["0.weight"] = "not a tensor"
    with pytest.raises(StitchError, match=r"not tensors 0\.weight"):
        load_state_dict_checked(model, state, "net", optional=["1.num_batches_tracked"])


def test_cached_download_uses_the_cache_and_refuses_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("STITCHCORE_OFFLINE", "1")
    assert is_offline("example.invalid")
    url = "https://example.invalid/weights/model-0123abcd.pth"
    with pytest.raises(OfflineError, match=r"thing: weights are not in .* use @random"):
        cached_download(url, "thing", hint="use @random")
    path = hub_checkpoint_path(url, "renamed.pth")
    assert path == tmp_path / "hub" / "checkpoints" / "renamed.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert cached_download(url, "thing", file_name="renamed.pth") == path


class _Payload:
    """Not on torch's allow-list: unpickling it would mean running code."""


class _RunsCode:
    """Unpickling it calls a function (``os.getcwd``): the classic pickle exploit, harmless."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("payload", "named"), [(_Payload(), "_Payload"), (_RunsCode(), "getcwd")], ids=["class", "call"]
)
def test_checkpoints_that_need_code_are_refused_naming_what_they_need(
    tmp_path, zipped, payload, named
):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": payload}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(StitchError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith("evil.pth: refusing to unpickle it: the checkpoint needs arbitrary")
    assert named in message and len(message.splitlines()) == 1


def test_unreadable_files_are_not_called_unsafe(tmp_path):
    """A damaged file or a plain pickle is not "a checkpoint that needs code": torch's reason is
    given instead, and the warning torch prints on the way (pickle protocol) is not shown."""
    (tmp_path / "junk.pth").write_bytes(b"garbage" * 10)
    with pytest.raises(StitchError, match=r"junk\.pth: not a checkpoint torch\.load\(weights_only"):
        read_checkpoint(tmp_path / "junk.pth")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StitchError, match=r"plain\.pkl: not a checkpoint .*Unsupported"):
            read_checkpoint(tmp_path / "plain.pkl")
    assert [str(w.message) for w in caught] == []


def test_library_loaders_are_refused_in_one_line_too(tmp_path):
    """transformers' from_pretrained on a directory whose pytorch_model.bin pickles a class:
    ``refuse_unsafe_pickles`` words torch's refusal as read_checkpoint does."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    torch.save({**model.state_dict(), "x": _Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(StitchError) as err:
        with refuse_unsafe_pickles(f"hf:{tmp_path.name}"):
            transformers.BertModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert message.startswith(f"hf:{tmp_path.name}: refusing to unpickle it")
    assert "_Payload" in message and len(message.splitlines()) == 1
