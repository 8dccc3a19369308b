"""Document -> LoadedConfig, or ConfigError listing every field path that is wrong.

The one validation path for every source of config: a document is refused whole, never applied
in part, and every error names where it is (`routes[2].plugins.grpc-transcode.method`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.models import Config, Route, Upstream
from gateway.plugins import REGISTRY
from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A config document that was refused, with every issue found in it."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with what validation had to build anyway: protos and plugin configs."""

    config: Config
    protos: dict[str, DescriptorIndex] = field(default_factory=dict)
    plugin_configs: dict[str, dict[str, BaseModel]] = field(default_factory=dict)  # route id -> name -> config
    base_dir: Path = Path()

    def upstream_of(self, route: Route) -> Upstream:
        if route.upstream is not None:
            return route.upstream
        return next(u for u in self.config.upstreams if u.id == route.upstream_id)


def load_config(path: str | Path) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc}")], str(path)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"{path} is not valid YAML: {exc}")], str(path)) from None
    try:
        return load_document(document, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(exc.issues, str(path)) from None


def load_document(document: Any, *, base_dir: Path = Path()) -> LoadedConfig:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue("", "the config document must be a mapping")])
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([ConfigIssue(_loc(err["loc"]), err["msg"]) for err in exc.errors()]) from None

    issues: list[ConfigIssue] = []
    issues.extend(_unique_ids("routes", config.routes))
    issues.extend(_unique_ids("upstreams", [u for u in config.upstreams if u.id]))
    issues.extend(_unique_ids("protos", config.protos))
    issues.extend(issue for i, u in enumerate(config.upstreams) if not u.id for issue in [_missing_id(i)])
    protos, proto_issues = _load_protos(config, base_dir)
    issues.extend(proto_issues)

    upstream_ids = {u.id for u in config.upstreams}
    plugin_configs: dict[str, dict[str, BaseModel]] = {}
    for index, route in enumerate(config.routes):
        where = f"routes[{index}]"
        if route.upstream is None and route.upstream_id is None:
            issues.append(ConfigIssue(where, "a route needs upstream or upstream_id"))
        elif route.upstream_id is not None and route.upstream_id not in upstream_ids:
            issues.append(ConfigIssue(f"{where}.upstream_id", f"no upstream has id {route.upstream_id!r}"))
        configs, plugin_issues = _validate_plugins(where, route.plugins)
        plugin_configs[route.id] = configs
        issues.extend(plugin_issues)
        transcode = configs.get("grpc-transcode")
        if transcode is not None:
            issues.extend(_check_transcode(where, route, transcode, protos, config))
    if issues:
        raise ConfigError(issues)
    return LoadedConfig(config=config, protos=protos, plugin_configs=plugin_configs, base_dir=base_dir)


def _loc(loc: Sequence[int | str], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _missing_id(index: int) -> ConfigIssue:
    return ConfigIssue(f"upstreams[{index}].id", "an upstream in the upstreams list needs an id")


def _unique_ids(kind: str, items: Sequence[Any]) -> Iterator[ConfigIssue]:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.id in seen:
            yield ConfigIssue(f"{kind}[{index}].id", f"duplicate id {item.id!r}")
        seen.add(item.id)


def _load_protos(config: Config, base_dir: Path) -> tuple[dict[str, DescriptorIndex], list[ConfigIssue]]:
    protos: dict[str, DescriptorIndex] = {}
    issues: list[ConfigIssue] = []
    for index, proto in enumerate(config.protos):
        path = Path(proto.descriptor_set)
        if not path.is_absolute():
            path = base_dir / path
        try:
            protos[proto.id] = DescriptorIndex.from_file(path)
        except TranscodeError as exc:
            issues.append(ConfigIssue(f"protos[{index}].descriptor_set", exc.message))
    return protos, issues


def _validate_plugins(where: str, plugins: dict[str, Any]) -> tuple[dict[str, BaseModel], list[ConfigIssue]]:
    configs: dict[str, BaseModel] = {}
    issues: list[ConfigIssue] = []
    for name, raw in plugins.items():
        plugin = REGISTRY.get(name)
        if plugin is None:
            known = ", ".join(sorted(REGISTRY))
            issues.append(ConfigIssue(f"{where}.plugins.{name}", f"unknown plugin (known: {known})"))
            continue
        try:
            configs[name] = plugin.Config.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            issues.extend(ConfigIssue(_loc(err["loc"], f"{where}.plugins.{name}"), err["msg"]) for err in exc.errors())
    return configs, issues


def _check_transcode(
    where: str, route: Route, transcode: Any, protos: dict[str, DescriptorIndex], config: Config
) -> Iterator[ConfigIssue]:
    at = f"{where}.plugins.grpc-transcode"
    upstream = route.upstream or next((u for u in config.upstreams if u.id == route.upstream_id), None)
    if upstream is not None and upstream.scheme != "grpc":
        yield ConfigIssue(f"{where}.upstream", "grpc-transcode needs an upstream with scheme grpc")
    if transcode.proto_id not in {p.id for p in config.protos}:
        yield ConfigIssue(f"{at}.proto_id", f"no proto has id {transcode.proto_id!r}")
        return
    index = protos.get(transcode.proto_id)
    if index is None:
        return  # the proto itself failed to load, and says so
    if transcode.service is not None and transcode.service not in index.services:
        known = ", ".join(sorted(index.services)) or "none"
        message = f"proto {transcode.proto_id!r} has no service {transcode.service!r} (it has: {known})"
        yield ConfigIssue(f"{at}.service", message)
        return
    if transcode.method is not None:
        full = f"{transcode.service}.{transcode.method}"
        if full not in index.methods:
            yield ConfigIssue(f"{at}.method", f"service {transcode.service!r} has no method {transcode.method!r}")
