"""The stable surface for plugin authors: everything a stitch-family, model-source or dataset
plugin may import from stitchcore. First-party plugins import only from here (and from the
package root), so what is promised to third parties is this list and nothing else; the other
modules may change. Documented in docs/plugin-hooks.md.
"""

from __future__ import annotations

from . import plugins as registry
from .cuts import Cut, CutBackend
from .datasets import Dataset, DataSplits
from .errors import CutError, OfflineError, StitchError, UnknownNameError, closest
from .families import StitchFamily, resolve_family
from .graph import outputs_close
from .hookspecs import hookimpl
from .linalg import AffineFit, LeastSquares, lstsq_with_bias
from .sources import LoadedModel, ModelSource, ModelSpec, parse_spec
from .spec import ActivationSpec, InputSpec, ModelHints, infer_activation_spec
from .tracing import TracerPolicy
from .weights import (
    cached_download,
    load_state_dict_checked,
    load_state_dict_file,
    random_seed,
    read_checkpoint,
    read_state_dict,
    refuse_unsafe_pickles,
    seeded,
    weights_only_loads,
)
from .zoo import list_entries, load_entry

__all__ = [
    "ActivationSpec",
    "AffineFit",
    "Cut",
    "CutBackend",
    "CutError",
    "DataSplits",
    "Dataset",
    "InputSpec",
    "LeastSquares",
    "LoadedModel",
    "ModelHints",
    "ModelSource",
    "ModelSpec",
    "OfflineError",
    "StitchError",
    "StitchFamily",
    "TracerPolicy",
    "UnknownNameError",
    "cached_download",
    "closest",
    "hookimpl",
    "infer_activation_spec",
    "list_entries",
    "load_entry",
    "load_state_dict_checked",
    "load_state_dict_file",
    "lstsq_with_bias",
    "outputs_close",
    "parse_spec",
    "random_seed",
    "read_checkpoint",
    "read_state_dict",
    "refuse_unsafe_pickles",
    "registry",
    "resolve_family",
    "seeded",
    "weights_only_loads",
]
