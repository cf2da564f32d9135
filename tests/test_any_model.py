"""Cutting models that are not one-tensor-in CNNs or timm blocks: several positional inputs, a
dict of keyword inputs with an attention mask as a side input, and hand-written models whose
residual adds live in the parent's loop over an ``nn.ModuleList``.

Every listed cut is checked against the invariant ``suffix(prefix(x), x) == model(x)`` on a
batch of another size and with side inputs the example never showed (other masks, other second
modalities), so a suffix that baked the example's side inputs in would fail.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import stitchcore
from stitchcore import CutError, Cutter, StitchError
from stitchcore.cuts import recomposes, resize_batch, run_suffix


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_every_cut(cutter: Cutter, inputs, cuts) -> None:
    """Each cut's halves reproduce the model on ``inputs`` (another batch size, other side
    inputs than the example's), through the public calling convention."""
    expected = cutter.reference(inputs)
    for cut in cuts:
        prefix, suffix = cutter.split(cut)
        assert recomposes(prefix, suffix, inputs, expected), cut.name


# ----------------------------------------------------------------------------- two inputs
class Fusion(nn.Module):
    """Two modalities, each with its own encoder, fused late: ``forward(image, extra)``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.enc_b = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.fuse = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, image, extra):
        a = self.enc_a(image).mean((2, 3))
        return self.head(torch.relu(self.fuse(torch.cat([a, self.enc_b(extra)], 1))))


@pytest.fixture(scope="module")
def fusion() -> Cutter:
    torch.manual_seed(0)
    example = (torch.randn(2, 3, 8, 8, generator=_gen()), torch.randn(2, 4, generator=_gen(1)))
    return Cutter(Fusion().eval(), example_input=example)


def test_two_positional_inputs_cut_along_the_first(fusion):
    names = [c.name for c in fusion.cuts(all=True)]
    assert names[:3] == ["enc_a.0", "enc_a.1", "enc_a.2"]
    assert {"cat", "fuse"} <= set(names)
    assert not any(n.startswith("enc_b") for n in names)  # the side input's own encoder
    assert [c.name for c in fusion.cuts()] == ["enc_a", "fuse"]
    assert fusion.resolve("enc_a").spec.shape == (8, 4, 4)
    other = (torch.randn(5, 3, 8, 8, generator=_gen(2)), torch.randn(5, 4, generator=_gen(3)))
    _check_every_cut(fusion, other, fusion.cuts(all=True))


def test_suffix_reads_side_inputs_from_the_receivers_own_inputs(fusion):
    prefix, suffix = fusion.split("enc_a")
    assert suffix.needs_context is True
    image = torch.randn(3, 3, 8, 8, generator=_gen(4))
    extra, other_extra = torch.randn(2, 3, 4, generator=_gen(5))
    with torch.no_grad():
        act = prefix((image, extra))
        # the activation from one extra, the side input from another: the suffix must use
        # what it is handed, exactly as the model would with (image, other_extra)
        out = run_suffix(suffix, act, (image, other_extra))
        assert torch.allclose(out, fusion.module(image, other_extra), atol=1e-5)
        assert not torch.allclose(out, fusion.module(image, extra), atol=1e-3)
    # after the fusion nothing of the side input is needed: a plain suffix(act)
    _, late = fusion.split("fuse")
    assert not getattr(late, "needs_context", False)


def test_side_input_values_are_not_cuts(fusion):
    with pytest.raises(CutError, match="depends only on side inputs, not on the primary input"):
        fusion.resolve("enc_b.0")


def test_extractor_takes_the_whole_input(fusion):
    cuts = [fusion.resolve("enc_a.0"), fusion.resolve("fuse")]
    with torch.no_grad():
        acts = fusion.extractor(cuts)(fusion.example)
        for cut, act in zip(cuts, acts):
            assert torch.equal(act, fusion.split(cut)[0](fusion.example)), cut.name


# ----------------------------------------------------------------------------- dict + mask
class MaskedEncoder(nn.Module):
    """Token features and an attention mask as keyword inputs. The additive attention bias is
    built from the mask *and the tokens' shape* before the first block and used by every block;
    the residual adds are written in this module's loop (``nn.MultiheadAttention`` is one leaf
    node per block)."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.blocks = nn.ModuleList(
            nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(depth)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, tokens, attention_mask):
        bias = (1.0 - attention_mask[:, None, :].float()) * -1e4
        bias = bias.repeat_interleave(2, 0).expand(-1, tokens.shape[1], -1)
        x = self.embed(tokens)
        for blk in self.blocks:
            x = x + blk(x, x, x, attn_mask=bias, need_weights=False)[0]
        keep = attention_mask[..., None].float()
        return self.head((x * keep).sum(1) / keep.sum(1))


def _masked_inputs(batch: int, seed: int) -> dict:
    mask = torch.ones(batch, 7)
    for i in range(batch):
        mask[i, 7 - (i % 4) :] = 0  # padding of 0-3 tokens, different per sample
    return {"tokens": torch.randn(batch, 7, 5, generator=_gen(seed)), "attention_mask": mask}


@pytest.fixture(scope="module")
def masked() -> Cutter:
    torch.manual_seed(0)
    return Cutter(MaskedEncoder().eval(), example_input=_masked_inputs(2, 0))


def test_dict_inputs_with_an_attention_mask(masked):
    cuts = masked.cuts()
    assert [(c.name, c.node) for c in cuts] == [
        ("embed", "embed"),
        ("blocks.0", "add"),
        ("blocks.1", "add_1"),
        ("blocks.2", "add_2"),
    ]
    assert all(masked.split(c)[1].needs_context for c in cuts)
    _check_every_cut(masked, _masked_inputs(5, 1), masked.cuts(all=True))


def test_dict_suffix_uses_the_mask_it_is_given(masked):
    prefix, suffix = masked.split("blocks.0")
    inputs = _masked_inputs(4, 2)
    other_mask = {**inputs, "attention_mask": torch.ones(4, 7)}
    with torch.no_grad():
        act = prefix(inputs)  # the mask only matters after block 0's own attention
        out = suffix(act, other_mask)
        exact = masked.module(**inputs)
    assert not torch.allclose(out, exact, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(suffix(act, inputs), exact, atol=1e-5)


def test_export_fallback_takes_several_inputs(monkeypatch):
    import stitchcore.graph

    monkeypatch.setattr(stitchcore.graph, "BACKENDS", ("export",))
    torch.manual_seed(0)
    cutter = Cutter(MaskedEncoder(depth=2).eval(), example_input=_masked_inputs(2, 0))
    assert cutter.backend.graph.backend == "export"
    assert [c.name for c in cutter.cuts()] == ["embed", "blocks.0", "blocks.1"]
    _check_every_cut(cutter, _masked_inputs(3, 4), cutter.cuts())
    fusion = Cutter(Fusion().eval(), example_input=(torch.randn(2, 3, 8, 8), torch.randn(2, 4)))
    assert [c.name for c in fusion.cuts()] == ["enc_a", "fuse"]


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (torch.randn(2, 3, 8, 8), r"takes input 'extra', which example_input does not give"),
        ((torch.randn(2, 3, 8, 8),) * 3, "takes 2 positional inputs, example_input gives 3"),
        ({"image": torch.randn(2, 3, 8, 8), "mask": torch.ones(2)}, r"keys \['mask'\] are not"),
        ((torch.randn(2, 3, 8, 8), 4), r"example_input\[1\] is a int, not a batched tensor"),
        ((torch.randn(2, 3, 8, 8), torch.randn(3, 4)), "different batch sizes"),
        ((torch.randn(2, 3, 8, 8), torch.randn(2, 5)), "Fusion fails on example_input: Runtime"),
    ],
    ids=["missing", "too-many", "unknown-key", "not-a-tensor", "batch-sizes", "wrong-shape"],
)
def test_examples_that_do_not_fit_are_one_line_errors(example, message):
    with pytest.raises(StitchError, match=message) as err:
        stitchcore.list_cuts(Fusion(), example_input=example)
    assert len(str(err.value).splitlines()) == 1


def test_timm_vit_cuts_the_same_given_a_tuple_or_a_dict():
    """A one-input model handed its input as a 1-tuple or as ``{"x": …}`` cuts exactly as with
    the tensor, and its prefix takes the input the way it was given."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3).eval()
    image = torch.randn(2, 3, 32, 32, generator=_gen())
    plain = [(c.name, c.node, c.spec) for c in Cutter(vit, example_input=image).cuts()]
    assert [name for name, _, _ in plain] == ["norm_pre", "blocks.0", "blocks.1", "blocks.2"]
    for example in ((image,), {"x": image}):
        cutter = Cutter(vit, example_input=example)
        assert [(c.name, c.node, c.spec) for c in cutter.cuts()] == plain
        prefix, suffix = cutter.split("blocks.1")
        assert not getattr(suffix, "needs_context", False)
        other = resize_batch(example, 3)
        with torch.no_grad():
            out = suffix(prefix(other))
            assert torch.allclose(out, vit(image[[0, 1, 0]]), atol=1e-5)


# ----------------------------------------------------------------------------- loops
class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class MixerBlock(nn.Module):
    """Only the sub-layers: the residual adds are the parent's."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mix = nn.Sequential(Transpose(), nn.Linear(tokens, tokens), Transpose())
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mix = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )


class HandMixer(nn.Module):
    """An MLP-Mixer written by hand: the residual adds sit in the parent's loop."""

    def __init__(self, depth: int = 3, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList(MixerBlock(16, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = x + blk.token_mix(blk.norm1(x))
            x = x + blk.channel_mix(blk.norm2(x))
        return self.head(self.norm(x).mean(1))


def test_block_names_mean_the_end_of_their_loop_iteration():
    torch.manual_seed(0)
    cutter = Cutter(HandMixer().eval(), example_input=torch.randn(2, 3, 16, 16, generator=_gen()))
    cuts = cutter.cuts()
    assert [(c.name, c.node) for c in cuts] == [
        ("stem", "stem"),
        ("blocks.0", "add_1"),
        ("blocks.1", "add_3"),
        ("blocks.2", "add_5"),  # not the final norm after the loop
    ]
    assert all(c.spec.shape == (16, 16) for c in cuts[1:])
    _check_every_cut(cutter, torch.randn(5, 3, 16, 16, generator=_gen(1)), cuts)
    # inside an iteration the residual still crosses: refused as before
    with pytest.raises(CutError, match="these values cross it: add"):
        cutter.resolve("blocks.1.channel_mix")


def test_a_loop_of_one_block_is_not_guessed():
    """With a single element there is no earlier iteration to tell the loop's own ops from
    what follows the loop, so ``blocks.0`` is refused rather than guessed."""
    cutter = Cutter(HandMixer(depth=1).eval(), example_input=torch.randn(2, 3, 16, 16))
    with pytest.raises(CutError, match="not a single-tensor cut"):
        cutter.resolve("blocks.0")
    assert "add_1" in [c.name for c in cutter.cuts(all=True)]
