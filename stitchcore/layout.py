"""Memory layout for speed: convolutional networks in channels-last (NHWC) order.

oneDNN's 2-D convolutions run markedly faster on channels-last tensors on a CPU: a frozen
ResNet-34 suffix at batch 640 took 1.22 s instead of 1.91 s for forward + input-gradient
backward, and 0.60 s instead of 1.01 s forward only (2 threads, benchmarks/channels_last.py).
Converting only changes the strides of the convolution weights: the values, the Parameter
objects and the outputs (to float rounding) stay the same, and inputs in either layout are
accepted.

Training a whole network (``stitch train``) gained nothing from it here (ResNet-34 on digits:
19.4 s per epoch either way), so only the frozen copies the engine cuts are converted
(``Cutter.fast_layout``, called by ``stitch matrix``); plain ``split`` / ``Cutter`` keep the
model's layout and reproduce it to 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fast_layout"]


def fast_layout(module: nn.Module) -> nn.Module:
    """Put the weights of ``module``'s 2-D convolutions in channels-last order (in place).

    Only convolution weights: their layout is what oneDNN follows, and ``module.to(memory_format=
    ...)`` would fail on models holding 5-D buffers (Swin's attention masks, for one).
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return module
