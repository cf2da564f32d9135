"""Cut names, validity and the modules a cut produces, on real timm models and small plain
``nn.Module``s written to hit one rule each."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import stitchcore
from stitchcore import CutError, Cutter, ModelHints, StitchError, UnknownNameError
from stitchcore.cuts import run_suffix


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet() -> Cutter:
    torch.manual_seed(0)
    # zero_init_last=False: with timm's default the residual branch starts at zero and
    # layer1.0.add would never be negative, hiding what an in-place ReLU does to it
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False)
    return Cutter(model, example_input=_x(2, 3, 32, 32))


def _recomposes(cutter: Cutter, prefix, suffix, x=None) -> bool:
    x = cutter.example if x is None else x
    with torch.no_grad():
        return torch.allclose(suffix(prefix(x)), cutter.module(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- names
def test_module_paths_resolve_to_the_last_node_inside(resnet):
    assert resnet.resolve("layer2").node == "layer2.1.act2"
    assert resnet.resolve("layer2.1").node == "layer2.1.act2"
    assert resnet.resolve("layer2").name == "layer2"
    assert resnet.resolve("act1").node == "act1"  # a leaf module is its own node


def test_module_paths_in_transformers_and_stage_models():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=6).eval()
    cut = Cutter(vit, example_input=_x(2, 3, 32, 32)).resolve("blocks.5")
    assert cut.node.startswith("blocks.5.") and cut.spec.shape == (5, 192)
    convnext = timm.create_model("convnext_atto").eval()
    cutter = Cutter(convnext, example_input=_x(2, 3, 32, 32))
    cut = cutter.resolve("stages.1")
    assert cut.node.startswith("stages.1.") and cut.spec.shape == (80, 4, 4)
    assert _recomposes(cutter, *cutter.split("stages.1"))


def test_raw_node_names_are_cuts(resnet):
    cut = resnet.resolve("layer1.0.add")
    assert (cut.name, cut.node) == ("layer1.0.add", "layer1.0.add")
    assert _recomposes(resnet, *resnet.split("layer1.0.add"))
    every = {c.name for c in resnet.cuts(all=True)}
    assert "layer1.0.add" in every and "global_pool.flatten" in every


def test_cut_across_a_skip_connection_is_refused_naming_what_crosses(resnet):
    with pytest.raises(CutError) as err:
        resnet.split("layer1.0.bn2")
    message = str(err.value)
    assert "skip connection" in message
    assert "maxpool (used by layer1.0.add)" in message  # the residual that crosses
    with pytest.raises(CutError, match="layer1.0.act2"):
        resnet.resolve("layer1.1.conv1")  # the second block's skip comes from layer1.0


def test_unknown_cut_names_the_closest_valid_names(resnet):
    with pytest.raises(UnknownNameError) as err:
        resnet.resolve("layr2")
    assert "unknown cut 'layr2'" in str(err.value)
    assert "closest: layer2" in str(err.value)
    assert isinstance(err.value, StitchError) and len(str(err.value).splitlines()) == 1


def test_placeholder_and_output_are_not_cuts(resnet):
    with pytest.raises(CutError, match="placeholder"):
        resnet.resolve("x")
    with pytest.raises(CutError, match="output"):
        resnet.resolve("output")


def test_default_cuts_start_with_the_stem_in_forward_order(resnet):
    assert [c.name for c in resnet.cuts()] == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_hint_names_that_do_not_resolve_are_reported_and_structure_fills_in():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.blocks = nn.Sequential(
                *[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)]
            )
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    loaded = stitchcore.LoadedModel(
        Net(), "test:net", stitchcore.InputSpec((3, 8, 8)), ModelHints(cuts=["block.0", "block.1"])
    )
    cutter = Cutter(loaded)
    assert [c.name for c in cutter.cuts()] == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    assert any(note.startswith("block.0: unknown cut") for note in cutter.backend.skipped)


# ----------------------------------------------------------------------------- modules
def test_suffix_starting_with_an_inplace_relu_leaves_the_activation_alone(resnet):
    prefix, suffix = resnet.split("layer1.0.add")
    first = next(n for n in suffix.graph.nodes if n.op == "call_module")
    assert first.target == "layer1.0.act2"
    assert suffix.get_submodule("layer1.0.act2").inplace  # the trap this guards against
    with torch.no_grad():
        act = prefix(resnet.example)
        before = act.clone()
        assert act.min() < 0
        out = suffix(act)
    assert torch.equal(act, before)
    assert torch.allclose(out, resnet.expected, atol=1e-5)


def test_extractor_returns_several_cuts_in_one_pass(resnet):
    cuts = [resnet.resolve(n) for n in ("layer1.0.add", "layer2", "global_pool")]
    extractor = resnet.extractor(cuts)
    with torch.no_grad():
        acts = extractor(resnet.example)
        assert isinstance(acts, tuple) and len(acts) == 3
        for cut, act in zip(cuts, acts):
            prefix, _ = resnet.split(cut)
            # layer1.0.add is followed by an in-place ReLU in the same pass: still pre-ReLU
            assert torch.equal(act, prefix(resnet.example)), cut.name
            assert tuple(act.shape[1:]) == cut.spec.shape
    assert acts[0].min() < 0


def test_suffix_runs_at_other_batch_sizes(resnet):
    prefix, suffix = resnet.split("layer3")
    for batch in (1, 5):
        x = _x(batch, 3, 32, 32)
        assert _recomposes(resnet, prefix, suffix, x)


def test_run_suffix_calls_plain_suffixes_with_the_activation_only(resnet):
    prefix, suffix = resnet.split("layer4")
    with torch.no_grad():
        out = run_suffix(suffix, prefix(resnet.example), resnet.example)
    assert torch.allclose(out, resnet.expected, atol=1e-5)


# ----------------------------------------------------------------------------- plain modules
class ShapeThenTokens(nn.Module):
    """A value that depends only on the input's shape (the batch size) crosses every cut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        batch = x.shape[0]
        y = torch.relu(self.mid(torch.relu(self.conv(x))))
        return self.head(y.reshape(batch, -1))


def test_shape_only_values_are_replayed_in_the_suffix():
    model = ShapeThenTokens().eval()
    cutter = Cutter(model, example_input=_x(2, 3, 8, 8))
    names = [c.name for c in cutter.cuts(all=True)]
    assert "mid" in names and "conv" in names
    prefix, suffix = cutter.split("mid")
    x = _x(7, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), model(x), atol=1e-5)


class OptionalMask(nn.Module):
    """An optional input left at None is a constant, not a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x, mask=None):
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask
        return self.b(h)


def test_none_optional_inputs_are_constants():
    model = OptionalMask().eval()
    cutter = Cutter(model, example_input=_x(2, 6))
    assert cutter.backend.graph.backend == "fx"
    assert [c.name for c in cutter.cuts()] == ["a"]  # "b" is the output: nothing after it
    prefix, suffix = cutter.split("a")
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(_x(3, 6))), model(_x(3, 6)), atol=1e-5)


class InplaceSideEffect(nn.Module):
    """``h.add_(1)`` without reassignment: its result is unused but it changes ``h``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        h = self.b(self.a(x))
        h.add_(1.0)
        return self.c(h)


def test_unused_inplace_ops_are_kept_on_both_sides():
    model = InplaceSideEffect().eval()
    cutter = Cutter(model, example_input=_x(2, 4))
    for cut in cutter.cuts(all=True):
        prefix, suffix = cutter.split(cut)  # split itself re-checks the invariant
        assert _recomposes(cutter, prefix, suffix, _x(3, 4)), cut.name
    # extracting "a" and "b" together gives what their prefixes give: "b" before its +1
    extractor = cutter.extractor([cutter.resolve("a"), cutter.resolve("b")])
    with torch.no_grad():
        a, b = extractor(cutter.example)
        assert torch.equal(b, cutter.split("b")[0](cutter.example))
        assert torch.allclose(b, model.b(model.a(cutter.example)))


class TwoHeads(nn.Module):
    """Both outputs hang off the input through separate paths: no single tensor carries
    everything, anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)

    def forward(self, x):
        return self.left(x), self.right(x)


def test_a_model_with_no_valid_cut_says_so():
    cutter = Cutter(TwoHeads().eval(), example_input=_x(2, 4))
    with pytest.raises(CutError, match="TwoHeads has no valid cut") as err:
        cutter.cuts()
    assert "these values cross too" in str(err.value)
    with pytest.raises(CutError, match="no valid cut"):
        stitchcore.list_cuts(TwoHeads(), all=True, example_input=_x(2, 4))


def test_plain_module_without_metadata_asks_for_example_input():
    with pytest.raises(StitchError, match="pass example_input="):
        stitchcore.list_cuts(InplaceSideEffect())


def test_structure_gives_default_cuts_for_plain_modules():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.Flatten()
    )
    cuts = stitchcore.list_cuts(net, example_input=_x(2, 3, 8, 8))
    assert [c.name for c in cuts] == ["0", "1", "2", "3"]


def test_module_inside_a_leaf_module_is_refused_with_the_leaf_named():
    model = timm.create_model("mobilevit_xxs").eval()
    cutter = Cutter(model, example_input=_x(2, 3, 64, 64))
    leaf = next(p for p in cutter.backend.graph.by_name if p.startswith("stages.2.1"))
    with pytest.raises(CutError, match=f"runs inside '{leaf}'"):
        cutter.resolve(leaf + ".conv_kxk")


# ----------------------------------------------------------------------------- export
class ShapeBranch(nn.Module):
    """Python control flow on a tensor's size: torch.fx cannot trace it (the size is a Proxy),
    torch.export can (sizes are known while exporting)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        if x.shape[-1] > 4:
            x = nn.functional.avg_pool2d(x, 2)
        x = self.block(x)
        return self.head(x.mean((2, 3)))


def test_export_fallback_traces_what_fx_cannot():
    model = ShapeBranch().eval()
    cutter = Cutter(model, example_input=_x(2, 3, 8, 8))
    graph = cutter.backend.graph
    assert graph.backend == "export"
    assert graph.trace_errors and graph.trace_errors[0].startswith("fx: TraceError")
    assert [c.name for c in cutter.cuts()] == ["stem", "block"]
    prefix, suffix = cutter.split("block")
    for batch in (1, 5):
        x = _x(batch, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(suffix(prefix(x)), model(x), atol=1e-5)
    assert cutter.resolve("block").spec.shape == (8, 4, 4)
    # raw names from export are module path + aten op
    assert any(c.name.startswith("block.") for c in cutter.cuts(all=True))


def test_untraceable_model_fails_with_both_reasons():
    class ValueBranch(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1  # depends on values: neither can trace

    with pytest.raises(StitchError, match="cannot trace ValueBranch") as err:
        Cutter(ValueBranch(), example_input=_x(2, 3))
    assert "fx:" in str(err.value) and "export:" in str(err.value)


def test_export_backend_gives_the_same_default_cuts_on_a_real_model(monkeypatch):
    """Forcing torch.export on a model FX can trace: same names, same specs, exact halves."""
    import stitchcore.graph

    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    x = _x(2, 3, 32, 32)
    via_fx = Cutter(model, example_input=x).cuts()
    monkeypatch.setattr(stitchcore.graph, "BACKENDS", ("export",))
    cutter = Cutter(model, example_input=x)
    assert cutter.backend.graph.backend == "export"
    cuts = cutter.cuts()
    assert [(c.name, c.spec) for c in cuts] == [(c.name, c.spec) for c in via_fx]
    for cut in cuts:
        assert _recomposes(cutter, *cutter.split(cut), _x(3, 3, 32, 32)), cut.name


class FoldedBatch(nn.Module):
    """Rows of every sample are processed as one big batch: ``lin`` sees ``4·B × 6``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        rows = self.lin(x.reshape(-1, 6))
        return self.out(rows.reshape(x.shape[0], 4, 6).mean(1))


def test_activation_without_the_batch_first_is_not_a_cut():
    cutter = Cutter(FoldedBatch().eval(), example_input=_x(2, 4, 6))
    with pytest.raises(
        CutError, match=r"does not keep the batch in its first dimension \(shape \[8, 6\]"
    ):
        cutter.resolve("lin")
    assert "lin" not in [c.name for c in cutter.cuts(all=True)]
    assert "mean" in [c.name for c in cutter.cuts(all=True)]
