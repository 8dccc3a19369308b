"""The built-in plugins, registered explicitly by name."""

from __future__ import annotations

from gateway.plugins.base import Plugin
from gateway.plugins.grpc_transcode import GrpcTranscode
from gateway.plugins.key_auth import KeyAuth

BUILTIN_PLUGINS: tuple[type[Plugin], ...] = (
    GrpcTranscode,
    KeyAuth,
)
REGISTRY: dict[str, type[Plugin]] = {plugin.name: plugin for plugin in BUILTIN_PLUGINS}

__all__ = ["BUILTIN_PLUGINS", "REGISTRY", "Plugin"]
