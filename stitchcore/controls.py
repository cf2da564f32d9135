"""Randomly initialised copies of a model: the controls of Bansal et al. and Hernandez et al.

A control keeps the architecture, input spec and head shape of the trained model and replaces
every parameter and buffer with a fresh initialisation (PyTorch's ``reset_parameters`` where a
module has one, a small normal draw for free-standing parameters such as class tokens), seeded so
a control is the same model every time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with random weights (reproducible for a given seed)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
        with torch.no_grad():
            for p in clone.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, 0.02)
    return clone.eval()


__all__ = [
    "randomized",
]
