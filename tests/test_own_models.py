"""Your own models and data through the engine: ``stitchcore.stitch`` and ``run_matrix`` with
plain ``nn.Module``s and your own data, and the cases that once went wrong.

- docs/bring-your-own-model.md is executed as written (a hand-written MLP-Mixer, its own
  DataLoaders, ``run_matrix`` and the heatmap) and its claims are checked;
- a receiver with several outputs is trained through its logits, never through its features,
  and an output the engine cannot read is refused with a one-line message;
- models of two inputs, positional or a dict, fed by a Dataset of ``((x, extra), label)`` items;
- a bare module that nothing describes goes through ``run_matrix`` traced on its own data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import stitchcore
from stitchcore import Cutter, InputSpec, LoadedModel, MatrixConfig, StitchConfig, run_matrix
from stitchcore.errors import StitchError

DOC = Path(__file__).resolve().parents[1] / "docs" / "bring-your-own-model.md"


# ----------------------------------------------------------------------------- the doc example
@pytest.fixture(scope="module")
def doc_run(tmp_path_factory):
    """Run the doc's code block in a fresh directory; its namespace afterwards."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "the doc has one runnable example"
    where = tmp_path_factory.mktemp("byom")
    namespace: dict = {"__name__": "__main__"}
    old = Path.cwd()
    os.chdir(where)
    try:
        exec(compile(blocks[0], str(DOC), "exec"), namespace)
    finally:
        os.chdir(old)
    return where, namespace


def test_the_documented_example_runs_and_draws(doc_run):
    where, ns = doc_run
    out = where / "results" / "mixer-matrix"
    for name in ("matrix.json", "matrix.csv", "heatmap.png", "penalty.png"):
        assert (out / name).is_file(), name
    results = ns["results"]
    names = [c["name"] for c in results["cuts"]["sender"]]
    assert names == ["stem", "blocks.0", "blocks.1", "blocks.2"]  # blocks of the loop
    cells = {(c["sender_cut"], c["receiver_cut"]): c for c in results["cells"]}
    assert len(cells) == 16 and all(c["status"] == "ok" for c in cells.values())
    # what the doc says it shows
    receiver = cells["blocks.2", "blocks.2"]["receiver_accuracy"]
    assert receiver > 0.85
    assert cells["stem", "stem"]["family"] == "conv1x1"
    assert cells["blocks.2", "blocks.2"]["family"] == "token_linear"
    for key in (("stem", "stem"), ("blocks.2", "blocks.2"), ("blocks.1", "blocks.2")):
        assert cells[key]["penalty"] < 0.05, key
    assert cells["blocks.0", "blocks.0"]["penalty"] > 0.2  # "lose most of it"


def test_a_users_module_is_recorded_by_class_parameters_and_state(doc_run):
    _, ns = doc_run
    results, a = ns["results"], ns["a"]
    sender = results["config"]["sender"]
    assert sender["module"] == "__main__.Mixer"
    assert sender["parameters"] == sum(p.numel() for p in a.parameters()) == 15738
    assert re.fullmatch(r"[0-9a-f]{16}", sender["state_sha256"])
    assert results["config"]["receiver"]["state_sha256"] != sender["state_sha256"]
    assert results["models"]["sender"]["loaded_as"] == "module"
    data = results["config"]["data"]
    assert (data["train"], data["test"], data["num_classes"]) == (1400, 397, 10)


# ----------------------------------------------------------------------------- which output
def _task(n: int = 600, seed: int = 0):
    """4 classes from the signs of two of 8 inputs; (train, test) tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return (x[:400], y[:400]), (x[400:], y[400:])


class Net(nn.Module):
    """``hidden`` features of width 4 — as many as classes, so a reader taking the first
    output would find "class scores" of the right shape — then the classifier."""

    def __init__(self, outputs: str = "tensor") -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)
        self.head = nn.Linear(4, 4)
        self.outputs = outputs

    def forward(self, x):
        features = torch.tanh(self.b(torch.relu(self.a(x))))
        logits = self.head(features)
        if self.outputs == "dict":
            return {"features": features, "logits": logits}
        if self.outputs == "scores":
            return {"features": features, "scores": logits}
        if self.outputs == "tuple":
            return features, logits
        return logits


def _trained(outputs: str, seed: int) -> Net:
    (x, y), _ = _task()
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.outputs = outputs
    return net.eval()


@pytest.fixture(scope="module")
def sender() -> Net:
    return _trained("tensor", seed=1)


def _stitch(sender, receiver, **kw):
    train, test = _task()
    return stitchcore.stitch(
        sender, "a", receiver, "a", train=train, test=test, epochs=2, device="cpu",
        example_input=train[0][:2], **kw,
    )  # fmt: skip


def test_a_dict_output_trains_through_logits_never_features(sender):
    receiver = _trained("dict", seed=2)
    _, (x, y) = _task()
    with torch.no_grad():
        out = receiver(x)
    by_logits = float((out["logits"].argmax(1) == y).float().mean())
    by_features = float((out["features"].argmax(1) == y).float().mean())
    assert by_logits > 0.9 and abs(by_logits - by_features) > 0.2  # they can be told apart
    result = _stitch(sender, receiver)
    assert result.metrics["receiver_accuracy"] == pytest.approx(by_logits, abs=1e-6)
    assert result.metrics["stitched_accuracy"] > 0.9
    explicit = _stitch(sender, receiver, logits="logits")
    assert explicit.metrics["stitched_accuracy"] == result.metrics["stitched_accuracy"]


@pytest.mark.parametrize(
    ("outputs", "logits", "message"),
    [
        ("scores", None, r"returns a mapping with keys \['features', 'scores'\]: say which"),
        ("tuple", None, "returns a tuple of 2 values: say which output is the logits"),
        ("scores", "probs", r"logits='probs' does not select an output of a model returning"),
    ],
)
def test_an_output_the_engine_cannot_read_is_refused(sender, outputs, logits, message):
    with pytest.raises(StitchError, match=message) as err:
        _stitch(sender, _trained(outputs, seed=2), logits=logits)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(("outputs", "logits"), [("scores", "scores"), ("tuple", 1)])
def test_naming_the_logits_makes_it_work(sender, outputs, logits):
    result = _stitch(sender, _trained(outputs, seed=2), logits=logits)
    assert result.metrics["receiver_accuracy"] > 0.9
    assert result.metrics["stitched_accuracy"] > 0.9


def test_naming_features_as_logits_is_refused_not_trained(sender):
    with pytest.raises(StitchError, match="not class scores over the data's 4 classes"):
        _stitch(sender, _trained("scores", seed=2), logits=lambda out: out["features"][:, :3])


def test_run_matrix_takes_the_logits_from_a_loaded_model(sender, tmp_path):
    train, test = _task()
    receiver = LoadedModel(_trained("scores", 2), "user:net", InputSpec((8,)), logits="scores")
    cfg = MatrixConfig(
        sender=Cutter(sender, train[0][:2]), receiver=receiver, data=(train, test),
        sender_cuts=["a"], receiver_cuts=["a", "b"], cka=False, stitch=StitchConfig(epochs=2),
    )  # fmt: skip
    results = run_matrix(cfg, tmp_path, device="cpu")
    assert [c["status"] for c in results["cells"]] == ["ok", "ok"]
    assert all(c["receiver_accuracy"] > 0.9 for c in results["cells"])


# ----------------------------------------------------------------------------- several inputs
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.extra = nn.Linear(4, 16), nn.Linear(4, 16)
        self.b, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x, extra):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)) + self.extra(extra))))


class Pairs(torch.utils.data.Dataset):
    """``((x, extra), label)`` items: the way to feed a model of several inputs."""

    def __init__(self, x, y, as_dict: bool = False) -> None:
        self.x, self.y, self.as_dict = x, y, as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        x, extra = self.x[i, :4], self.x[i, 4:]
        return ({"x": x, "extra": extra} if self.as_dict else (x, extra)), self.y[i]


@pytest.fixture(scope="module")
def two_inputs():
    """A trained TwoInputs on a task that needs both inputs: the label is the sign of x[0]
    plus twice the sign of extra[1]; (model, (train, test) with those labels)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 5] > 0).long()
    torch.manual_seed(0)
    model = TwoInputs()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:400, :4], x[:400, 4:]), y[:400]).backward()
        opt.step()
    return model.eval(), ((x[:400], y[:400]), (x[400:], y[400:]))


@pytest.mark.parametrize("as_dict", [False, True], ids=["two-positional", "dict-of-inputs"])
def test_a_model_of_two_inputs_fed_by_a_dataset(two_inputs, as_dict):
    """Cut along the first input; the suffix takes the second from the receiver's own batch,
    so a stitch at the same cut keeps the receiver's accuracy, which needs both inputs."""
    model, ((x, y), (xt, yt)) = two_inputs
    example = {"x": x[:2, :4], "extra": x[:2, 4:]} if as_dict else (x[:2, :4], x[:2, 4:])
    result = stitchcore.stitch(
        model, "a", model, "a", train=Pairs(x, y, as_dict), test=Pairs(xt, yt, as_dict),
        epochs=1, device="cpu", example_input=example,
    )  # fmt: skip
    assert result.metrics["receiver_accuracy"] > 0.9  # it reads both inputs
    assert result.metrics["stitched_accuracy"] > 0.9


# ------------------------------------------------------------------- a bare module in a matrix
def test_run_matrix_takes_a_bare_module_with_its_own_data(sender, tmp_path):
    train, test = _task()
    cfg = MatrixConfig(sender=sender, receiver=sender, data=(train, test), sender_cuts=["a"],
                       receiver_cuts=["a"], cka=False, stitch=StitchConfig(epochs=1))  # fmt: skip
    assert run_matrix(cfg, tmp_path, device="cpu")["cells"][0]["status"] == "ok"


def test_one_dict_output_model_as_sender_and_receiver():
    model = _trained("scores", seed=2)
    result = _stitch(model, model, logits="scores")
    assert result.metrics["stitched_accuracy"] > 0.9
