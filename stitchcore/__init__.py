"""stitchcore: cut any PyTorch model at named nodes and stitch models together.

Public API (stable names outside code can rely on):
  load_model(spec) -> LoadedModel
  list_cuts(model_or_loaded, all=False, example_input=None) -> list[Cut]
  split(model_or_loaded, cut_name, example_input=None) -> (prefix, suffix)
  stitch(sender, sender_cut, receiver, receiver_cut, family="auto", train=..., ...)
      -> StitchResult (.model: StitchedModel, .metrics)
  run_matrix(MatrixConfig(sender=..., receiver=..., ...), out, device=...) -> dict (matrix.json)
  hookimpl: decorator for plugin hook implementations
"""

__version__ = "0.1.0"  # first: modules imported below read it

from .cuts import Cut, CutBackend, Cutter, list_cuts, split
from .errors import CutError, StitchError, UnknownNameError
from .graph import TracerPolicy
from .hookspecs import hookimpl
from .matrix import MatrixConfig
from .pair import StitchResult, stitch
from .runner import run_matrix
from .runtime import Runtime, make_runtime
from .sources import LoadedModel, ModelSource, ModelSpec, build_model, load_model, parse_spec
from .spec import ActivationSpec, InputSpec, ModelHints
from .stitching import StitchConfig, StitchedModel

__all__ = [
    "ActivationSpec",
    "Cut",
    "CutBackend",
    "CutError",
    "Cutter",
    "InputSpec",
    "LoadedModel",
    "MatrixConfig",
    "ModelHints",
    "ModelSource",
    "ModelSpec",
    "Runtime",
    "StitchConfig",
    "StitchError",
    "StitchResult",
    "StitchedModel",
    "TracerPolicy",
    "UnknownNameError",
    "hookimpl",
    "list_cuts",
    "build_model",
    "load_model",
    "make_runtime",
    "parse_spec",
    "run_matrix",
    "split",
    "stitch",
]
