"""The layout rules of docs/architecture.md, checked so they stay true: every module marks its
public names, nobody imports another module's private names, first-party plugins use only the
plugin surface, the core knows no model library, imports flow one way, modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted((ROOT / "stitchcore").rglob("*.py"))
PLUGINS = sorted((ROOT / "plugins").rglob("*.py"))

#: lower layers never import higher ones (docs/architecture.md, "Layers")
LAYERS = [
    {"cli"},
    {"runner", "report"},
    {"basemodels", "matrix", "pair", "checkpoint"},
    {"engine", "results"},
    {"feeds", "trainer", "userdata", "plot"},
    {"zoo", "training", "stitching", "diagnostics", "similarity", "controls", "loader"},
    {"cuts", "families", "sources", "datasets", "cache", "runtime", "linalg"},
    {
        "graph",
        "tracing",
        "iteration",
        "default_hints",
        "layout",
        "heap",
        "weights",
        "fileio",
        "provenance",
    },
    {"spec", "plugins", "hookspecs", "errors"},
]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "stitchcore" or len(parts) < 2:
        return None
    for k, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return k
    return None


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_marks_its_public_names_and_stays_small(path):
    text = path.read_text()
    if path.name != "__main__.py":
        assert "__all__" in text, f"{path.name} has no __all__"
    assert len(text.splitlines()) <= 700, f"{path.name} is {len(text.splitlines())} lines"


@pytest.mark.parametrize("path", CORE + PLUGINS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path):
    for mod, names in _imports(path):
        if not mod.startswith(("stitchcore", "plugins")):
            continue
        own_package = path.parent.name
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        if private and own_package not in mod.split("."):
            pytest.fail(f"{path.name} imports private {private} from {mod}")


@pytest.mark.parametrize("path", PLUGINS, ids=lambda p: str(p.relative_to(ROOT)))
def test_first_party_plugins_import_only_the_plugin_surface(path):
    for mod, _names in _imports(path):
        if mod.startswith("stitchcore.") and not mod.startswith("stitchcore_"):
            assert mod == "stitchcore.plugin", f"{path.name} imports {mod}: use stitchcore.plugin"


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_knows_no_model_library_and_imports_flow_down(path):
    text = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+(timm|transformers|stitchcore_\w+)\b", text, re.M), (
        f"{path.name} imports a model library or a plugin"
    )
    here = _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if here is None:
        return
    for mod, _ in _imports(path):
        there = _layer(mod)
        if there is not None and there < here:
            pytest.fail(f"{path.name} (layer {here}) imports {mod} (higher layer {there})")


def test_plugin_surface_exports_what_plugin_authors_need():
    import stitchcore.plugin as surface

    for name in ("Dataset", "DataSplits", "StitchFamily", "ModelSource", "ActivationSpec",
                 "LoadedModel", "InputSpec", "hookimpl", "StitchError"):  # fmt: skip
        assert name in surface.__all__
        assert getattr(surface, name) is not None
    documented = (ROOT / "docs" / "plugin-hooks.md").read_text()
    missing = [n for n in surface.__all__ if f"`{n}`" not in documented]
    assert not missing, f"docs/plugin-hooks.md does not list {missing}"
