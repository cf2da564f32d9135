"""First-party plugin: the ``zoo:`` model source, models trained by ``stitch train``.

``zoo:NAME`` loads the entry NAME from the local zoo (``$STITCHCORE_ZOO`` or the user cache dir;
``stitch zoo`` lists them); ``zoo:PATH/NAME.json`` loads an entry from any directory;
``zoo:NAME@random`` is the same architecture randomly initialised (``stitch cuts`` asks for it). The model
comes with the input spec it was trained with (e.g. 3×32×32 and the normalisation used), its
class count, its base model's cut hints, and the zoo record as ``meta``.
"""

from __future__ import annotations

import stitchcore
from stitchcore.plugin import LoadedModel, ModelSource, StitchError, list_entries, load_entry


class ZooSource(ModelSource):
    name = "zoo"
    description = "models trained by `stitch train` in the local zoo (`stitch zoo` lists them)"

    def known_names(self) -> list[str]:
        return [r["name"] for r in list_entries()]

    def load(self, name: str, weights: str | None) -> LoadedModel:
        if weights not in (None, "random"):
            raise StitchError(
                f"zoo:{name}@{weights}: zoo models carry their own weights; write zoo:{name} "
                f"(or zoo:{name}@random for the same architecture, randomly initialised)"
            )
        return load_entry(name, trained=weights is None)


@stitchcore.hookimpl
def register_model_sources(register):
    register(ZooSource())


__all__ = ["ZooSource"]
