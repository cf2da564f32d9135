"""Stitch training and evaluation on real (small) trained models and the digits data."""

import pytest
import torch
from torch import nn

import stitchcore
from stitchcore.checkpoint import load_stitched, save_stitch
from stitchcore.datasets import DataOptions, adapt, load_data
from stitchcore.errors import StitchError
from stitchcore.pair import Side, stitch
from stitchcore.stitching import FrozenGuard, FrozenModelError, StitchedModel


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", DataOptions(train_size=600))  # a subset keeps the suite fast


def test_stitchcore_exports_the_stitch_api():
    assert stitchcore.stitch is stitch
    assert stitchcore.StitchedModel is StitchedModel


def test_identity_stitch_between_copies_reproduces_the_model(digits_pair, digits):
    a, _ = digits_pair
    result = stitch(a, "layer2", a, "layer2", "conv1x1", train=digits, init="identity", epochs=0)
    m = result.metrics
    assert m["receiver_accuracy"] > 0.8  # the base model really learnt digits
    assert m["stitched_accuracy"] == pytest.approx(m["receiver_accuracy"], abs=0.003)
    assert m["penalty"] == pytest.approx(0.0, abs=0.003)


def test_lstsq_init_beats_random_init_before_training(digits_pair, digits):
    a, b = digits_pair
    kwargs = dict(train=digits, epochs=0)
    rand = stitch(a, "layer2", b, "layer2", "conv1x1", init="random", **kwargs)
    lsq = stitch(a, "layer2", b, "layer2", "conv1x1", init="lstsq", **kwargs)
    assert lsq.metrics["init_accuracy"] > rand.metrics["init_accuracy"] + 0.3
    assert lsq.metrics["stitched_accuracy"] > 0.7


def test_training_lowers_the_loss_and_is_deterministic(digits_pair, digits):
    a, b = digits_pair
    runs = [
        stitch(a, "layer1", b, "layer1", "conv1x1", train=digits, init="random", epochs=3, seed=7)
        for _ in range(2)
    ]
    hist = runs[0].history
    # a random-init stitch needs far more steps than 3 epochs of digits to stitch well
    # (Bansal et al. train 120k iterations); here only the direction is checked
    assert len(hist) == 3 and hist[2] < hist[1] < hist[0]
    sd0, sd1 = (r.model.stitch.state_dict() for r in runs)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert runs[0].metrics == {**runs[1].metrics, "time_s": runs[0].metrics["time_s"]}


def test_training_after_lstsq_improves_accuracy(digits_pair, digits):
    a, b = digits_pair
    result = stitch(a, "layer1", b, "layer1", "conv1x1", train=digits, epochs=1)
    m = result.metrics
    assert m["init_accuracy"] > 0.8
    assert m["stitched_accuracy"] > m["init_accuracy"]


def test_fine_tuning_a_wide_lstsq_stitch_keeps_its_accuracy(digits_pair, digits):
    # act1 (64×16×16) → layer2 (128×4×4): a strided conv with 1,024 inputs per output. At a plain
    # lr of 1e-3 Adam's first sign steps threw such stitches from ~96 % to ~40 % in one epoch;
    # fine-tuning (lr scaled by fan-in, warm-up) must keep them near their closed-form accuracy.
    a, b = digits_pair
    m = stitch(a, "act1", b, "layer2", "strided_conv", train=digits, epochs=1).metrics
    assert m["init_accuracy"] > 0.8
    assert m["stitched_accuracy"] > m["init_accuracy"] - 0.02


def test_unsolved_epochs_restart_a_closed_form_at_chance_from_random_init(digits_pair, digits):
    # layer4 → layer1 (upsample_conv): least squares is at chance; with unsolved_epochs the
    # stitch must train exactly as from random init, for that many epochs
    a, b = digits_pair
    kw = dict(train=digits, family="upsample_conv")
    mixed = stitch(a, "layer4", b, "layer1", epochs=0, unsolved_epochs=1, **kw).metrics
    scratch = stitch(a, "layer4", b, "layer1", init="random", epochs=1, **kw).metrics
    assert mixed["init_accuracy"] < 0.3
    assert mixed["train_loss"] == pytest.approx(scratch["train_loss"], rel=1e-4)
    assert mixed["stitched_accuracy"] == pytest.approx(scratch["stitched_accuracy"], abs=0.01)


def test_optimizer_fine_tunes_only_stitches_that_start_solved():
    from stitchcore.runtime import Runtime
    from stitchcore.stitching import StitchConfig, base_lrs, starts_solved
    from stitchcore.trainer import Member, _Opt

    cfg = StitchConfig(epochs=1)
    wide, narrow = nn.Conv2d(256, 8, 2), nn.Conv2d(16, 8, 1)  # fan-in 1,024 and 16
    assert base_lrs(list(wide.parameters()), 1e-3, True) == pytest.approx([1e-3 * 64 / 1024, 1e-3])
    assert base_lrs(list(narrow.parameters()), 1e-3, False) == pytest.approx([1e-3, 1e-3])
    solved = _Opt(Member(0, wide, fine_tuned=True), cfg, Runtime(), steps=8)
    scratch = _Opt(Member(1, narrow, fine_tuned=False), cfg, Runtime(), steps=8)
    for o in (solved, scratch):
        o.set_lr()
    lrs = [g["lr"] for g in solved.opt.param_groups]
    assert lrs[0] == pytest.approx(1e-3 * 64 / 1024 / 3)  # fan-in scaled, warm-up 1/3 at step 0
    assert lrs[1] == pytest.approx(1e-3 / 3)  # the bias: full lr, warming up
    lrs = [g["lr"] for g in scratch.opt.param_groups]
    assert lrs == pytest.approx([1e-3, 1e-3])  # learning from scratch: full lr, no warm-up
    assert starts_solved(cfg, 0.3, 10) and not starts_solved(cfg, 1.5, 10)
    assert not starts_solved(StitchConfig(init="random"), 0.01, 10)
    assert starts_solved(StitchConfig(objective="match"), 9.0, 10)


def test_sender_and_receiver_stay_frozen(digits_pair, digits):
    a, b = digits_pair
    result = stitch(a, "layer2", b, "layer3", train=digits, epochs=1)
    model = result.model
    assert result.family == "strided_conv"  # layer2 map is twice layer3's: auto chose it
    assert all(not p.requires_grad for p in model.sender_prefix.parameters())
    assert all(not p.requires_grad for p in model.receiver_suffix.parameters())
    model.train()
    assert model.stitch.training and not model.receiver_suffix.training


def test_frozen_guard_catches_an_unfrozen_batchnorm(digits_pair):
    a, _ = digits_pair
    prefix, suffix = stitchcore.split(a, "layer2")
    guard = FrozenGuard(receiver_suffix=suffix)
    bn = next(m for m in suffix.modules() if isinstance(m, nn.BatchNorm2d))
    bn.train()  # the classic bug: a BatchNorm left in training mode updates its running stats
    with torch.no_grad():
        suffix(prefix(adapt(torch.rand(8, 1, 8, 8), a.input)))
    with pytest.raises(FrozenModelError, match="running_mean"):
        guard.verify()


def test_iterable_batches_and_plain_modules(digits_pair, digits):
    """Research code hands in plain nn.Modules and its own (inputs, labels) batches."""
    a, b = digits_pair
    x_tr, x_te = adapt(digits.train_x, a.input), adapt(digits.test_x, a.input)
    train = [(x_tr[i : i + 64], digits.train_y[i : i + 64]) for i in range(0, len(x_tr), 64)]
    test = [(x_te[i : i + 64], digits.test_y[i : i + 64]) for i in range(0, len(x_te), 64)]
    result = stitch(
        a.module, "layer2", b.module, "layer2", train=train, test=test, epochs=1,
        example_input=x_tr[:2],
    )  # fmt: skip
    assert result.metrics["stitched_accuracy"] > 0.7
    out = result.model(x_te[:5])
    assert out.shape == (5, 10)


def test_match_objective_reports_matching_error(digits_pair, digits):
    a, b = digits_pair
    result = stitch(a, "layer1", b, "layer1", train=digits, objective="match", epochs=1)
    assert result.metrics["match_mse"] >= 0
    assert result.metrics["stitched_accuracy"] is not None


def test_closed_form_permutation_needs_no_training(digits_pair, digits):
    a, _ = digits_pair
    result = stitch(a, "layer2", a, "layer2", "permutation", train=digits, epochs=3)
    assert result.history == []  # trainable=False
    assert result.metrics["penalty"] == pytest.approx(0.0, abs=0.003)  # same model: identity


def test_refusing_family_lists_the_ones_that_can(digits_pair, digits):
    a, b = digits_pair
    with pytest.raises(StitchError, match="families that can: .*strided_conv"):
        stitch(a, "layer1", b, "layer2", "conv1x1", train=digits)
    with pytest.raises(StitchError, match="unknown stitch family 'conv1x2'"):
        stitch(a, "layer1", b, "layer1", "conv1x2", train=digits)


def test_saved_stitch_rebuilds_with_the_same_accuracy(digits_pair, digits, tmp_path):
    a, b = digits_pair
    result = stitch(a, "layer2", b, "layer2", train=digits, epochs=1)
    save_stitch(tmp_path / "s", result, sender=a.spec, receiver=b.spec, data="digits")
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["stitch.json", "stitch.safetensors"]
    model, record = load_stitched(tmp_path / "s")
    x = adapt(digits.test_x, a.input)
    with torch.no_grad():
        acc = (model(x).argmax(1) == digits.test_y).float().mean().item()
    assert acc == pytest.approx(record["metrics"]["stitched_accuracy"], abs=1e-6)


def test_checkpoint_for_another_pair_says_which_shapes_differ(digits_pair, digits, tmp_path):
    a, b = digits_pair
    result = stitch(a, "layer2", b, "layer2", train=digits, epochs=0)
    save_stitch(tmp_path / "s", result, sender=a.spec, receiver=b.spec, data="digits")
    record = (tmp_path / "s" / "stitch.json").read_text()
    (tmp_path / "s" / "stitch.json").write_text(record.replace('"layer2"', '"layer3"'))
    with pytest.raises(StitchError, match="was trained on"):
        load_stitched(tmp_path / "s")


def test_side_without_input_spec_needs_an_example(digits):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3)
            self.b = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(StitchError, match="example_input"):
        Side.of(Net())


def test_only_a_closed_form_at_chance_restarts_from_scratch(digits_pair, digits):
    from stitchcore.stitching import at_chance

    # 128 samples, 10 classes: chance is 10 %, three standard deviations above it 18 %
    assert at_chance(0.1, 128, 10) and at_chance(0.17, 128, 10) and not at_chance(0.2, 128, 10)
    assert at_chance(0.08, 128, 26) and not at_chance(0.1, 128, 26)
    a, b = digits_pair
    # a heavily ridged least-squares fit without BN: well above chance, far from solved. It keeps
    # its closed form (before, any closed form not solved restarted from scratch and lost it)
    kw = {"train": digits, "epochs": 1, "family": "conv1x1", "batchnorm": False, "device": "cpu"}
    mid = stitch(a, "layer3", b, "layer3", ridge=300.0, **kw).metrics
    assert 0.3 < mid["init_accuracy"] < 0.8
    assert (mid["fine_tuned"], mid["from_scratch"]) == (False, False)
    # a ridge that leaves it at chance does restart
    flat = stitch(a, "layer3", b, "layer3", ridge=1e5, **kw).metrics
    assert flat["init_accuracy"] < 0.15 and flat["from_scratch"]
    assert mid["stitched_accuracy"] > flat["stitched_accuracy"] + 0.2
