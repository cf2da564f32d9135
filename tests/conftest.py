import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs two pytest-xdist workers on the 2-core CI machine: one torch thread each. A
# plain `pytest` uses 2 threads. STITCHCORE_TEST_THREADS overrides both (1 on a shared machine:
# OpenMP barriers stall badly under contention).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
torch.set_num_threads(
    int(
        os.environ.get("STITCHCORE_TEST_THREADS", 1 if _WORKER else min(2, torch.get_num_threads()))
    )
)


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


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """A private zoo for the whole test session (never the user's cache), shared by the xdist
    workers of one run. Developers can set STITCHCORE_TEST_ZOO to a directory to keep the small
    trained models between runs."""
    keep = os.environ.get("STITCHCORE_TEST_ZOO")
    if keep:
        path = Path(keep)
    else:  # the run's root (all workers' base temp dirs live in it) when under xdist
        root = tmp_path_factory.getbasetemp()
        path = (root.parent if _WORKER else root) / "shared-zoo"
        path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("STITCHCORE_ZOO")
    os.environ["STITCHCORE_ZOO"] = str(path)
    yield path
    if old is None:
        os.environ.pop("STITCHCORE_ZOO", None)
    else:
        os.environ["STITCHCORE_ZOO"] = old


@pytest.fixture(scope="session")
def digits_pair(zoo_dir):
    """Two small ResNets trained on digits with different seeds (real training, ~1 min), by
    the first xdist worker that needs them; the others wait on the lock and load them."""
    from filelock import FileLock

    from stitchcore.zoo import ensure_trained

    quiet = lambda _msg: None  # noqa: E731
    with FileLock(str(zoo_dir / "digits_pair.lock")):
        a, _ = ensure_trained(
            "timm:resnet10t@random", "digits", seed=0, epochs=3, log=quiet, progress=False
        )
        b, _ = ensure_trained(
            "timm:resnet10t@random", "digits", seed=1, epochs=3, log=quiet, progress=False
        )
    return a, b
