"""First-party plugin: the standard stitch families.

Registered through the same ``register_stitch_families`` hook a third-party plugin uses:

========================  ========================================================  =========
family                    stitches                                                  auto rank
========================  ========================================================  =========
``conv1x1``               map → map, equal spatial size (BN → 1×1 conv → BN)        10
``strided_conv``          map → map, sender k× larger (kernel = stride = k)         20
``subpixel_conv``         map → map, sender k× smaller (patch → k×k block, shuffle)  25
``upsample_conv``         map → map, sender k× smaller (nearest ×k, 1×1 conv)       30
``token_linear``          tokens ↔ tokens / maps (CNN ↔ ViT), per-token linear      40
``linear``                anything → vector (pooled; BN1d → Linear → BN1d)          50
``permutation``           same shape, channel matching, not trained                 never
========================  ========================================================  =========

Every trainable family has a closed-form least-squares ``init`` that holds in train and eval
mode; ``conv1x1``, ``token_linear``, ``linear`` and ``permutation`` have ``init_identity``.
"""

from __future__ import annotations

import stitchcore

from .conv import Conv1x1Family, ConvStitch, StridedConvFamily, UpsampleConvFamily
from .permutation import PermutationFamily, PermutationStitch
from .subpixel import SubpixelConvFamily, SubpixelStitch
from .tokens import TokenLinearFamily, TokenLinearStitch
from .vector import LinearFamily, LinearStitch

FAMILIES = (
    Conv1x1Family,
    StridedConvFamily,
    SubpixelConvFamily,
    UpsampleConvFamily,
    TokenLinearFamily,
    LinearFamily,
    PermutationFamily,
)


@stitchcore.hookimpl
def register_stitch_families(register):
    for family in FAMILIES:
        register(family())


__all__ = [
    "FAMILIES",
    "Conv1x1Family",
    "ConvStitch",
    "LinearFamily",
    "LinearStitch",
    "PermutationFamily",
    "PermutationStitch",
    "StridedConvFamily",
    "SubpixelConvFamily",
    "SubpixelStitch",
    "TokenLinearFamily",
    "TokenLinearStitch",
    "UpsampleConvFamily",
]
