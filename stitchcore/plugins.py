"""The plugin manager: built-ins and third-party plugins, loaded the same way.

First-party plugins (``plugins/`` in the repository) and third-party ones are both found through
the ``stitchcore`` entry-point group. ``STITCHCORE_PLUGINS=timm,families`` loads only those entry
points (an empty value loads none); ``STITCHCORE_TRACE_PLUGINS=1`` prints every hook call.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import StitchError, UnknownNameError

GROUP = "stitchcore"
ENV_PLUGINS = "STITCHCORE_PLUGINS"
ENV_TRACE = "STITCHCORE_TRACE_PLUGINS"

# Core behaviour that is itself a plugin (generic model hints for plain nn.Modules).
DEFAULT_PLUGINS = ("stitchcore.default_hints",)

_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created and loaded on first use."""
    global _pm
    if _pm is None:
        _pm = _create()
    return _pm


def _create() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    wanted = os.environ.get(ENV_PLUGINS)
    allowed = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            print(f"stitchcore: plugin {ep.name!r} failed to load: {exc}", file=sys.stderr)
            continue
        pm.register(plugin, name=ep.name)
        dist = getattr(ep, "dist", None)
        if dist is not None:
            _DISTS[ep.name] = (dist.name, dist.version)
    pm.check_pending()
    if os.environ.get(ENV_TRACE):
        pm.add_hookcall_monitoring(_before, _after)
    return pm


_DISTS: dict[str, tuple[str, str]] = {}


def _before(hook_name, hook_impls, kwargs):
    names = [impl.plugin_name for impl in hook_impls]
    print(f"stitchcore: calling {hook_name} on {names}", file=sys.stderr)


def _after(outcome, hook_name, hook_impls, kwargs):
    print(f"stitchcore: {hook_name} done", file=sys.stderr)


# ----------------------------------------------------------------------------- registries
@dataclass
class Registered:
    """Everything one registration hook produced, with the plugin that produced each item."""

    items: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)


def _collect(hook_name: str) -> Registered:
    pm = get_plugin_manager()
    out = Registered()
    hook = getattr(pm.hook, hook_name)
    # Call implementations one by one (in pluggy's order, reversed so that the first registered
    # wins ties predictably) to know which plugin registered what.
    for impl in reversed(hook.get_hookimpls()):

        def register(item: Any, _plugin: str = impl.plugin_name) -> None:
            name = getattr(item, "name", None)
            if not name or not isinstance(name, str):
                raise StitchError(f"plugin {_plugin!r} registered {item!r} without a name")
            if name in out.items:
                raise StitchError(
                    f"plugin {_plugin!r} registers {name!r}, already registered by "
                    f"{out.owner[name]!r}"
                )
            out.items[name] = item
            out.owner[name] = _plugin

        impl.function(register=register)
    return out


def families() -> dict[str, Any]:
    """Registered stitch families by name."""
    return _collect("register_stitch_families").items


def sources() -> dict[str, Any]:
    """Registered model sources by prefix."""
    return _collect("register_model_sources").items


def datasets() -> dict[str, Any]:
    """Registered datasets by name."""
    return _collect("register_datasets").items


def get_family(name: str):
    known = families()
    if name not in known:
        raise UnknownNameError("stitch family", name, [*known, "auto"])
    return known[name]


def get_source(name: str):
    known = sources()
    if name not in known:
        raise UnknownNameError("model source", name, known)
    return known[name]


def get_dataset(name: str):
    known = datasets()
    if name not in known:
        raise UnknownNameError("dataset", name, known)
    return known[name]


def plugin_report() -> list[dict]:
    """One row per loaded plugin: its name, package, hooks, and what it registered."""
    pm = get_plugin_manager()
    regs = {
        "families": _collect("register_stitch_families"),
        "sources": _collect("register_model_sources"),
        "datasets": _collect("register_datasets"),
    }
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        row: dict = {
            "name": name,
            "package": _DISTS.get(name, ("stitchcore", None))[0],
            "version": _DISTS.get(name, (None, None))[1],
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        for kind, reg in regs.items():
            row[kind] = sorted(k for k, owner in reg.owner.items() if owner == name)
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])


def call_first(hook_name: str, **kwargs) -> Any:
    return getattr(get_plugin_manager().hook, hook_name)(**kwargs)


def call_all(hook_name: str, **kwargs) -> list[Any]:
    return [r for r in getattr(get_plugin_manager().hook, hook_name)(**kwargs) if r is not None]


__all__ = [
    "DEFAULT_PLUGINS",
    "ENV_PLUGINS",
    "ENV_TRACE",
    "GROUP",
    "Registered",
    "call_all",
    "call_first",
    "datasets",
    "families",
    "get_dataset",
    "get_family",
    "get_plugin_manager",
    "get_source",
    "plugin_report",
    "sources",
]
