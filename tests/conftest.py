import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def register_plugin():
    """Register a plugin object for one test, then unregister it."""
    from stitchcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    names = []

    def _register(plugin, name):
        pm.register(plugin, name=name)
        names.append(name)
        return plugin

    yield _register
    for name in names:
        pm.unregister(name=name)
