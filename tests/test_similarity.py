"""Linear CKA: the properties that make it CKA, and the minibatch estimator against full batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitchcore.similarity import MinibatchCKA, linear_cka


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _structured(n: int = 512, seed: int = 0, noise: float = 2.0):
    """X and Y = X W + noise: related, but far from identical (CKA around 0.6-0.8)."""
    g = _gen(seed)
    x = torch.randn(n, 40, generator=g, dtype=torch.float64)
    w = torch.randn(40, 30, generator=g, dtype=torch.float64)
    y = x @ w + noise * torch.randn(n, 30, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_of_a_representation_with_itself_is_one(debiased):
    x = torch.randn(100, 8, 4, 4, generator=_gen(1))  # rank-4 activations are flattened
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    x, y = _structured()
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=_gen(2), dtype=torch.float64))
    reference = linear_cka(x, y, debiased=debiased)
    assert 0.3 < reference < 0.95  # a non-trivial value, so invariance is a real check
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y, debiased=debiased) == pytest.approx(reference, abs=1e-10)
    # Adding a constant offset to every sample changes nothing either (features are centred).
    assert linear_cka(x + 3.0, y - 1.0, debiased=debiased) == pytest.approx(reference, abs=1e-9)


def test_not_invariant_to_arbitrary_invertible_linear_maps():
    x, y = _structured()
    # Invertible but badly conditioned: stretches a few directions by 100x.
    a = torch.randn(40, 40, generator=_gen(3), dtype=torch.float64)
    a = a @ torch.diag(torch.logspace(0, 2, 40, dtype=torch.float64))
    assert torch.linalg.matrix_rank(a) == 40
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 0.05
    assert linear_cka(x, x @ a) < 0.9


def test_independent_features_are_near_zero_only_when_debiased():
    # Few samples, many features: the regime where biased CKA is badly inflated.
    a = torch.randn(64, 500, generator=_gen(4))
    b = torch.randn(64, 500, generator=_gen(5))
    assert abs(linear_cka(a, b)) < 0.05
    assert linear_cka(a, b, debiased=False) > 0.5


def test_constant_representation_gives_nan():
    x = torch.randn(20, 5, generator=_gen(6))
    assert math.isnan(linear_cka(x, torch.ones(20, 3)))


def test_sample_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))


def test_minibatch_single_batch_equals_full_batch_debiased():
    x, y = _structured(n=200)
    cka = MinibatchCKA(1, 1)
    cka.update([x], [y])
    assert cka.result()[0, 0] == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_minibatch_close_to_full_batch_on_structured_data():
    x, y = _structured(n=1024, seed=7)
    z = torch.randn(1024, 16, generator=_gen(8), dtype=torch.float64)  # unrelated to both
    cka = MinibatchCKA(2, 2)
    for s in range(0, 1024, 128):
        cka.update([x[s : s + 128], z[s : s + 128]], [y[s : s + 128], x[s : s + 128]])
    got = cka.result()
    assert got.shape == (2, 2)
    full = np.array([[linear_cka(x, y), linear_cka(x, x)], [linear_cka(z, y), linear_cka(z, x)]])
    assert 0.4 < full[0, 0] < 0.9
    np.testing.assert_allclose(got, full, atol=0.03)
    assert got[0, 1] == pytest.approx(1.0, abs=1e-9)
    assert cka.batches == 8 and cka.samples == 1024


def test_minibatch_skips_batches_smaller_than_four():
    x, y = _structured(n=67)
    cka = MinibatchCKA(1, 1)
    cka.update([x[:3]], [y[:3]])
    assert np.isnan(cka.result()).all()  # nothing usable yet
    cka.update([x[3:]], [y[3:]])
    assert cka.skipped == 1 and cka.batches == 1
    assert cka.result()[0, 0] == pytest.approx(linear_cka(x[3:], y[3:]), abs=1e-12)


def test_minibatch_checks_its_inputs():
    cka = MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="expected 2 sender and 1 receiver"):
        cka.update([torch.randn(8, 3)], [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="batch size"):
        cka.update([torch.randn(8, 3), torch.randn(9, 3)], [torch.randn(8, 3)])


def _digits_32px(n: int) -> torch.Tensor:
    """Real images: scikit-learn's 8x8 digits, upsampled to 32x32 RGB in [0, 1]."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32) / 16.0
    images = F.interpolate(images[:, None], size=32, mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous()


def _activations(model: torch.nn.Module, modules: list[str], x: torch.Tensor):
    """Activations at the outputs of named modules, through forward hooks (test-only helper)."""
    got: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: got.__setitem__(name, out.detach())
        )
        for name in modules
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [got[name] for name in modules]


def test_minibatch_close_to_full_batch_on_resnet18_activations():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    sender = timm.create_model("resnet18", num_classes=10).eval()
    torch.manual_seed(1)
    receiver = timm.create_model("resnet18", num_classes=10).eval()
    x = _digits_32px(256)
    cuts = ["layer1", "layer3"]
    acts_a = _activations(sender, cuts, x)
    acts_b = _activations(receiver, cuts, x)
    assert acts_a[0].shape == (256, 64, 8, 8) and acts_a[1].shape == (256, 256, 2, 2)

    cka = MinibatchCKA(2, 2)
    for s in range(0, 256, 64):
        cka.update([a[s : s + 64] for a in acts_a], [b[s : s + 64] for b in acts_b])
    got = cka.result()
    full = np.array([[linear_cka(a, b) for b in acts_b] for a in acts_a])
    assert np.isfinite(full).all()
    np.testing.assert_allclose(got, full, atol=0.05)
    # Same-depth cuts of two networks are more alike than cuts two stages apart.
    assert full[0, 0] > full[0, 1]
