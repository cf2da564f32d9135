"""Hook specifications: everything a plugin can add to stitchcore.

A plugin is any module or object with functions decorated ``@stitchcore.hookimpl`` whose names
match the specs below. Built-in plugins use exactly these hooks; there is no back door.
Every hook here is documented in docs/plugin-hooks.md (a test keeps the two in step).
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("stitchcore")
hookimpl = HookimplMarker("stitchcore")


@hookspec
def register_stitch_families(register):
    """Register stitch families: call ``register(family)`` with StitchFamily instances."""


@hookspec
def register_model_sources(register):
    """Register model sources: call ``register(source)`` with ModelSource instances.

    A source owns the ``SOURCE:`` prefix of model specs such as ``timm:resnet18@random``.
    """


@hookspec
def register_datasets(register):
    """Register datasets: call ``register(dataset)`` with Dataset instances."""


@hookspec
def tracer_policy(model):
    """Return a TracerPolicy (leaf modules, autowrap functions) for tracing ``model``, or None.

    Policies from all plugins are merged, so a plugin that knows a library's untraceable pieces
    (timm's, torchvision.ops) makes every model that uses them traceable.
    """


@hookspec(firstresult=True)
def model_hints(model):
    """Return ModelHints for ``model`` (default cuts, input spec, layouts), or None.

    The first plugin that recognises the model answers.
    """


@hookspec(firstresult=True)
def cut_backend(model, example):
    """Return a CutBackend that lists cuts of and splits ``model``, or None for the FX default.

    ``example`` is a batched example input. For models that torch.fx cannot trace by design
    (Hugging Face transformers 5.x).
    """


__all__ = [
    "cut_backend",
    "hookimpl",
    "hookspec",
    "model_hints",
    "register_datasets",
    "register_model_sources",
    "register_stitch_families",
    "tracer_policy",
]
