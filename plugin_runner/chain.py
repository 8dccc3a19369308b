"""A route's prepared plugin chain: configs validated once, hooks run in order. No gRPC here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from plugin_runner.sdk import Plugin, Request, Response

__all__ = ["Chain", "ConfigError", "PluginFailed", "prepare_chain", "run_request", "run_response", "validate_config"]


class ConfigError(ValueError):
    """A chain was refused: an unknown plugin or a config its model refused. `errors` are (field path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {message}" for path, message in errors))


class PluginFailed(RuntimeError):
    """A plugin's hook raised; the message names the plugin and hook, `__cause__` is the original exception."""


@dataclass(frozen=True)
class Chain:
    """Plugins with their validated configs, in execution order, and what the chain needs from the gateway."""

    steps: tuple[tuple[Plugin, Any], ...]

    @property
    def request_phase(self) -> bool:
        return any(type(plugin).implements_request() for plugin, _ in self.steps)

    @property
    def response_phase(self) -> bool:
        return any(type(plugin).implements_response() for plugin, _ in self.steps)

    @property
    def needs_request_body(self) -> bool:
        return any(plugin.needs_body and type(plugin).implements_request() for plugin, _ in self.steps)

    @property
    def needs_response_body(self) -> bool:
        return any(plugin.needs_body and type(plugin).implements_response() for plugin, _ in self.steps)

    @property
    def vars(self) -> list[str]:
        return sorted({name for plugin, _ in self.steps for name in plugin.vars})


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validate_config(plugin: Plugin, raw: Mapping[str, Any] | None, prefix: str = "config") -> Any:
    """The plugin's Config instance for `raw` (the raw dict when Config is None); ConfigError names each field."""
    raw = dict(raw or {})
    model = type(plugin).Config
    if model is None:
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            path = _field_path(error["loc"])
            errors.append((f"{prefix}.{path}" if path else prefix, error["msg"]))
        raise ConfigError(errors) from None


def prepare_chain(registry: Mapping[str, Plugin], confs: Sequence[tuple[str, Mapping[str, Any] | None]]) -> Chain:
    """Validate every (name, config) of a route; all errors are reported together, with `plugins[i]` paths."""
    steps: list[tuple[Plugin, Any]] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, (name, raw) in enumerate(confs):
        where = f"plugins[{index}]"
        plugin = registry.get(name)
        if plugin is None:
            errors.append((f"{where}.name", f"unknown plugin {name!r}; this runner offers {sorted(registry)}"))
            continue
        if name in seen:
            errors.append((f"{where}.name", f"plugin {name!r} appears twice in one chain"))
            continue
        seen.add(name)
        try:
            steps.append((plugin, validate_config(plugin, raw, prefix=f"{where}({name}).config")))
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return Chain(tuple(steps))


async def run_request(chain: Chain, request: Request) -> Request:
    """Run the request hooks in order until one stops; `request` carries the merged outcome."""
    for plugin, config in chain.steps:
        if not type(plugin).implements_request():
            continue
        try:
            await plugin.on_request(request, config)
        except Exception as exc:
            raise PluginFailed(f"plugin {plugin.name!r} failed in on_request: {type(exc).__name__}: {exc}") from exc
        if request.stopped is not None:
            break
    return request


async def run_response(chain: Chain, response: Response) -> Response:
    """Run the response hooks in chain order; `response` carries the merged changes."""
    for plugin, config in chain.steps:
        if not type(plugin).implements_response():
            continue
        try:
            await plugin.on_response(response, config)
        except Exception as exc:
            raise PluginFailed(f"plugin {plugin.name!r} failed in on_response: {type(exc).__name__}: {exc}") from exc
    return response
