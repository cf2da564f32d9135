"""The plugin system: what ``stitch plugins`` reports, plugins registered at run time and
installed as packages, misspelt hooks, ``STITCHCORE_PLUGINS``, duplicate names, and the hook
documentation (every hookspec documented, every example in it working)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pluggy import PluginValidationError

import stitchcore
from stitchcore import hookspecs, plugins
from stitchcore.cli import commands  # noqa: F401  (registers the subcommands)
from stitchcore.cli.main import cli
from stitchcore.errors import StitchError, UnknownNameError
from stitchcore.families import StitchFamily

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugin-hooks.md"
STITCH = Path(sys.executable).with_name("stitch")
HOOKS = sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "stitchcore_spec"))


def stitch(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


def report() -> dict[str, dict]:
    result = stitch("plugins", "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


# ----------------------------------------------------------------------------- listing
def test_stitch_plugins_lists_every_plugin_with_what_it_registered():
    rows = report()
    installed = {ep.name for ep in importlib.metadata.entry_points(group=plugins.GROUP)}
    assert set(rows) == installed | set(plugins.DEFAULT_PLUGINS)
    pm = plugins.get_plugin_manager()
    for name, row in rows.items():
        implemented = sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(name)))
        assert row["hooks"] == implemented, name
    # every registered item appears under exactly the plugin that registered it
    for kind, names in (
        ("families", plugins.families()),
        ("sources", plugins.sources()),
        ("datasets", plugins.datasets()),
    ):
        listed = [item for row in rows.values() for item in row[kind]]
        assert sorted(listed) == sorted(names), kind
    assert rows["timm"]["sources"] == ["timm"]
    assert "tracer_policy" in rows["timm"]["hooks"] and "model_hints" in rows["timm"]["hooks"]
    assert rows["stitchcore.default_hints"]["hooks"] == ["model_hints"]
    assert "conv1x1" in rows["families"]["families"]


def test_stitch_plugins_table_names_each_plugin():
    result = stitch("plugins")
    assert result.exit_code == 0, result.output
    for name in report():
        assert name in result.stdout


# ----------------------------------------------------------------------------- docs
def _sections() -> dict[str, str]:
    parts = re.split(r"(?m)^## (\S+)\s*$", DOC.read_text())
    return dict(zip(parts[1::2], parts[2::2]))


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_hookspec_is_documented():
    sections = _sections()
    assert sorted(sections) == HOOKS, "docs/plugin-hooks.md headings must be the hook names"
    for hook, text in sections.items():
        assert f"`{hook}(" in text, f"{hook}: document its signature"
        blocks = _python_blocks(text)
        assert blocks and any(f"def {hook}(" in b for b in blocks), f"{hook}: needs an example"


def _doc_module() -> types.ModuleType:
    """Every code block of docs/plugin-hooks.md, run as one module (one plugin)."""
    module = types.ModuleType("doc_examples")
    for block in _python_blocks(DOC.read_text()):
        exec(compile(block, str(DOC), "exec"), module.__dict__)
    return module


@pytest.fixture
def doc_plugin(register_plugin) -> types.ModuleType:
    return register_plugin(_doc_module(), "doc-examples")


def test_registered_plugin_shows_up_with_its_registrations(doc_plugin):
    row = report()["doc-examples"]
    assert row["hooks"] == HOOKS  # the docs implement every hook once
    assert (row["families"], row["sources"], row["datasets"]) == (["scale"], ["tiny"], ["stripes"])
    assert "doc-examples" in stitch("plugins").stdout


def test_documented_family_and_dataset_work(doc_plugin):
    family = plugins.get_family("scale")
    spec = stitchcore.ActivationSpec((8, 4, 4), "nchw")
    stitch_module = family.build(spec, spec)
    x = torch.randn(2, 8, 4, 4)
    family.init_identity(stitch_module)
    assert torch.equal(stitch_module(x), x)
    assert "needs equal shapes" in family.accepts(spec, stitchcore.ActivationSpec((8,), "vector"))
    from stitchcore.datasets import load_data

    data = load_data("stripes")
    assert data.train_x.shape == (256, 1, 16, 16) and data.num_classes == 2
    assert set(data.train_y.tolist()) == {0, 1}
    assert torch.equal(load_data("stripes").test_x, data.test_x)  # deterministic


def test_documented_source_works_on_the_command_line(doc_plugin):
    result = stitch("cuts", "tiny:cnn3", "--json")
    assert result.exit_code == 0, result.output
    cuts = json.loads(result.stdout)["cuts"]
    assert [c["name"] for c in cuts] == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    assert cuts[-1]["shape"] == [8, 2, 2]
    with pytest.raises(UnknownNameError, match="closest: cnn"):
        stitchcore.load_model("tiny:cnn9")
    bad = stitch("cuts", "tiny:cnn2@pretrained")
    assert bad.exit_code == 2 and "has no weights but @random" in bad.stderr


def test_documented_tracer_policy_makes_a_model_traceable(doc_plugin):
    x = torch.randn(2, 3, 8, 8)
    cuts = stitchcore.list_cuts(doc_plugin.GatedNet(), example_input=x)
    assert [c.name for c in cuts] == ["conv", "gate", "head"]


def test_without_the_tracer_policy_the_model_cannot_be_traced():
    module = _doc_module()  # not registered
    with pytest.raises(StitchError, match="cannot trace GatedNet with torch.fx or torch.export"):
        stitchcore.Cutter(module.GatedNet(), example_input=torch.randn(2, 3, 8, 8))


def test_documented_model_hints_give_cuts_and_input(doc_plugin):
    cuts = stitchcore.list_cuts(doc_plugin.StagedNet())  # no example_input needed
    assert [c.name for c in cuts] == ["stem", "stages.0", "stages.1", "stages.2"]
    assert [c.node for c in cuts[1:]] == ["stages.0.add", "stages.1.add", "stages.2.add"]


def test_documented_cut_backend_is_used_and_checked(doc_plugin):
    model = doc_plugin.EarlyExitNet().eval()
    x = torch.randn(2, 6)
    cutter = stitchcore.Cutter(model, example_input=x)
    assert isinstance(cutter.backend, doc_plugin.EarlyExitBackend)
    assert [c.name for c in cutter.cuts()] == ["blocks.0", "blocks.1", "blocks.2"]
    prefix, suffix = cutter.split("blocks.1")
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), model(x))
        first, second = cutter.extractor([cutter.resolve("blocks.2"), cutter.resolve("blocks.0")])(
            x
        )
        assert torch.equal(second, cutter.split("blocks.0")[0](x))
        assert torch.equal(first, cutter.split("blocks.2")[0](x))


# ----------------------------------------------------------------------------- mistakes
class _Typo:
    @stitchcore.hookimpl
    def register_stich_families(self, register):  # misspelt on purpose
        raise AssertionError("never called")


def test_check_pending_catches_a_misspelt_hook():
    pm = plugins.get_plugin_manager()
    pm.register(_Typo(), name="typo")
    try:
        with pytest.raises(PluginValidationError, match="unknown hook 'register_stich_families'"):
            pm.check_pending()
    finally:
        pm.unregister(name="typo")
    pm.check_pending()  # the real plugins are all fine


class _Duplicate:
    class Family(StitchFamily):
        name = "conv1x1"

    @stitchcore.hookimpl
    def register_stitch_families(self, register):
        register(self.Family())


def test_duplicate_registration_names_fail_clearly(register_plugin):
    register_plugin(_Duplicate(), "dup-test")
    with pytest.raises(StitchError) as err:
        plugins.families()
    message = str(err.value)
    assert "'conv1x1'" in message and "'families'" in message and "'dup-test'" in message
    result = stitch("plugins")
    assert result.exit_code == 2 and "already registered by" in result.stderr


# ----------------------------------------------------------------------------- installed
FAKE_PLUGIN = """
    import torch.nn as nn
    import stitchcore
    from stitchcore.families import StitchFamily

    class Passthrough(StitchFamily):
        name = "fake-passthrough"

        def accepts(self, sender, receiver):
            return None if sender == receiver else "needs equal specs"

        def build(self, sender, receiver, **options):
            return nn.Identity()

    @stitchcore.hookimpl
    def {hook}(register):
        register(Passthrough())
"""


def _install_fake(root: Path, entry: str, module: str, hook: str) -> Path:
    """A plugin installed as a distribution: a module plus its dist-info with entry points,
    found on PYTHONPATH exactly like a pip-installed package."""
    (root / f"{module}.py").write_text(textwrap.dedent(FAKE_PLUGIN.format(hook=hook)))
    info = root / f"{module}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[stitchcore]\n{entry} = {module}\n")
    return root


def _run_stitch(tmp_path: Path, plugins_env: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "STITCHCORE_PLUGINS": plugins_env,
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [str(STITCH), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_installed_plugin_found_and_env_var_restricts_loading(tmp_path):
    _install_fake(tmp_path, "fake", "stitchcore_fake", "register_stitch_families")
    proc = _run_stitch(tmp_path, "timm,fake", "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {"stitchcore.default_hints", "timm", "fake"}
    assert (rows["fake"]["package"], rows["fake"]["version"]) == ("stitchcore_fake", "0.3")
    assert rows["fake"]["families"] == ["fake-passthrough"]
    nothing = _run_stitch(tmp_path, "", "plugins", "--json")
    assert [row["name"] for row in json.loads(nothing.stdout)] == ["stitchcore.default_hints"]


def test_installed_plugin_with_a_misspelt_hook_stops_stitch(tmp_path):
    _install_fake(tmp_path, "typo", "stitchcore_typo", "register_stich_families")
    proc = _run_stitch(tmp_path, "typo", "plugins")
    assert proc.returncode != 0
    assert "unknown hook 'register_stich_families'" in proc.stderr
