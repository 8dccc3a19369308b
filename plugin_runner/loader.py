"""Resolve `--plugins` specs (`pkg.module[:Class]` or `path/to/file.py[:Class]`) to plugin instances."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from plugin_runner.sdk import Plugin

__all__ = ["PluginLoadError", "load_plugins", "registry_of"]


class PluginLoadError(ValueError):
    """A spec names no module, no class, or something that is not a Plugin."""


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginLoadError(f"no such plugin file: {path}")
    resolved = path.resolve()
    # A stable, unique module name per file, so two files named plugin.py don't collide.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    name = f"_protogate_plugin_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: pydantic and dataclasses look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _plugins_in(module: ModuleType) -> list[type[Plugin]]:
    """The module's PLUGINS sequence if it has one, else the Plugin subclasses defined in it."""
    listed = getattr(module, "PLUGINS", None)
    if listed is not None:
        return list(listed)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Plugin)
        and value is not Plugin
        and value.__module__ == module.__name__
        and "name" in value.__dict__
    ]


def _load_one(spec: str) -> list[Plugin]:
    target, _, class_name = spec.partition(":")
    if target.endswith(".py") or "/" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise PluginLoadError(f"cannot import {target!r}: {exc}") from exc
    if class_name:
        cls = getattr(module, class_name, None)
        if cls is None:
            raise PluginLoadError(f"{target!r} has no {class_name!r}")
        classes = [cls]
    else:
        classes = _plugins_in(module)
        if not classes:
            raise PluginLoadError(f"{target!r} defines no Plugin subclass with a name")
    plugins = []
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Plugin)) or not getattr(cls, "name", ""):
            raise PluginLoadError(f"{spec!r}: {cls!r} is not a Plugin subclass with a name")
        plugins.append(cls())
    return plugins


def load_plugins(specs: Iterable[str]) -> list[Plugin]:
    """Instances of every plugin the specs name, in order; names must be unique."""
    plugins = [plugin for spec in specs for plugin in _load_one(spec)]
    registry_of(plugins)
    return plugins


def registry_of(plugins: Sequence[Plugin]) -> dict[str, Plugin]:
    registry: dict[str, Plugin] = {}
    for plugin in plugins:
        if plugin.name in registry:
            raise PluginLoadError(f"two plugins are named {plugin.name!r}")
        registry[plugin.name] = plugin
    return registry
