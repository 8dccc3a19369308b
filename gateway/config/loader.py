"""Document -> LoadedConfig, or ConfigError listing every field path that is wrong.

The one validation path for every source of config: a document is refused whole, never applied
in part, and every error names where it is (`routes[2].plugins.grpc-transcode.method`).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.models import Config, Route, Service, Upstream
from gateway.config.yaml_text import parse_yaml, yaml_problem
from gateway.consumers import EMPTY_CONSUMERS, Consumer, ConsumerIndex
from gateway.plugins import REGISTRY
from gateway.plugins.base import PluginMeta, PluginSpec
from gateway.plugins.ext_plugin import ExtPluginConfig, runner_issues
from gateway.plugins.traffic_split import referenced_upstream_ids
from transcoder.descriptors import DescriptorIndex

ModelT = TypeVar("ModelT", bound=BaseModel)


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
    """A validated config with what validation had to build anyway: protos, plugin specs, consumers."""

    config: Config
    protos: dict[str, DescriptorIndex] = field(default_factory=dict)
    # route id -> plugin name -> spec, already merged: service, then plugin_config, then the route's own
    route_plugins: dict[str, dict[str, PluginSpec]] = field(default_factory=dict)
    global_plugins: dict[str, PluginSpec] = field(default_factory=dict)
    # username -> the non-credential plugins that run for that consumer (its group's, then its own)
    consumer_plugins: dict[str, dict[str, PluginSpec]] = field(default_factory=dict)
    consumers: ConsumerIndex = EMPTY_CONSUMERS
    base_dir: Path = Path()

    def upstream_of(self, route: Route) -> Upstream:
        service = self.service_of(route)
        if route.upstream is not None:
            return route.upstream
        upstream_id = route.upstream_id
        if upstream_id is None and service is not None:
            if service.upstream is not None:
                return service.upstream
            upstream_id = service.upstream_id
        return next(u for u in self.config.upstreams if u.id == upstream_id)

    def service_of(self, route: Route) -> Service | None:
        if route.service_id is None:
            return None
        return next(s for s in self.config.services if s.id == route.service_id)

    def plugin_config(self, route_id: str, name: str) -> BaseModel | None:
        spec = self.route_plugins.get(route_id, {}).get(name)
        return spec.config if spec is not None else None


def load_config(path: str | Path) -> LoadedConfig:
    path = Path(path)
    document = read_config_document(path)
    try:
        return load_document(document, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(exc.issues, str(path)) from None


def read_config_document(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or ConfigError with one line saying what is wrong and where.

    A key given twice in one mapping is refused: YAML keeps the last one silently, so a second
    `plugins:` under a route would drop the first (its key-auth, say) without a word.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read the file: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read the file: not UTF-8 text ({exc.reason})")], str(path)
        ) from None
    try:
        document = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {yaml_problem(exc)}")], str(path)) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue("", _not_a_mapping(document))], str(path))
    return document


def load_document(document: Any, *, base_dir: Path = Path()) -> LoadedConfig:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue("", "the config document must be a mapping")])
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(validation_issues(exc, Config, document)) from None
    return _Checker(config, base_dir).load()


def schema_issues(document: dict[str, Any]) -> list[ConfigIssue]:
    """The document's shape errors only (fields, types), without reading descriptors or certificates."""
    try:
        Config.model_validate(document)
    except ValidationError as exc:
        return validation_issues(exc, Config, document)
    return []


def _not_a_mapping(document: Any) -> str:
    return f"the config document must be a mapping (gateway:, routes:, ...), not {_describe(document)}"


class _Checker:
    """Cross-field checks and plugin validation over one parsed Config, collecting every issue."""

    def __init__(self, config: Config, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def load(self) -> LoadedConfig:
        config = self.config
        for kind in ("routes", "services", "protos", "plugin_configs", "global_rules", "consumer_groups"):
            self.issues.extend(_unique_ids(kind, getattr(config, kind)))
        self.issues.extend(_unique_ids("upstreams", [u for u in config.upstreams if u.id]))
        self.issues.extend(_unique_ids("plugin_runners", config.plugin_runners, "name"))
        self.issues.extend(_missing_id(i) for i, u in enumerate(config.upstreams) if not u.id)
        self.issues.extend(_unique_ids("ssls", config.ssls))
        self._check_tls()
        seen_users: set[str] = set()
        for index, consumer in enumerate(config.consumers):
            if consumer.username in seen_users:
                self.issues.append(ConfigIssue(f"consumers[{index}].username", f"duplicate {consumer.username!r}"))
            seen_users.add(consumer.username)
        protos = self._load_protos()
        upstream_ids = {u.id for u in config.upstreams}
        for index, service in enumerate(config.services):
            if service.upstream_id is not None and service.upstream_id not in upstream_ids:
                self.issues.append(ConfigIssue(f"services[{index}].upstream_id", _no("upstream", service.upstream_id)))
        services = {s.id: (i, s) for i, s in enumerate(config.services)}
        plugin_sets = {
            p.id: self._plugins(f"plugin_configs[{i}]", p.plugins) for i, p in enumerate(config.plugin_configs)
        }
        service_plugins = {sid: self._plugins(f"services[{i}]", s.plugins) for sid, (i, s) in services.items()}
        global_plugins: dict[str, PluginSpec] = {}
        for index, rule in enumerate(config.global_rules):
            global_plugins.update(_enabled(self._plugins(f"global_rules[{index}]", rule.plugins)))

        route_plugins: dict[str, dict[str, PluginSpec]] = {}
        for index, route in enumerate(config.routes):
            where = f"routes[{index}]"
            merged: dict[str, PluginSpec | None] = {}
            service = None
            if route.service_id is not None:
                if route.service_id not in services:
                    self.issues.append(ConfigIssue(f"{where}.service_id", _no("service", route.service_id)))
                else:
                    service = services[route.service_id][1]
                    merged.update(service_plugins[route.service_id])
            if route.plugin_config_id is not None:
                if route.plugin_config_id not in plugin_sets:
                    self.issues.append(
                        ConfigIssue(f"{where}.plugin_config_id", _no("plugin_config", route.plugin_config_id))
                    )
                else:
                    merged.update(plugin_sets[route.plugin_config_id])
            merged.update(self._plugins(where, route.plugins))
            route_plugins[route.id] = _enabled(merged)
            upstream = self._route_upstream(where, route, service, upstream_ids)
            split = route_plugins[route.id].get("traffic-split")
            if split is not None:
                for ref in referenced_upstream_ids(split.config):
                    if ref not in upstream_ids:
                        self.issues.append(ConfigIssue(f"{where}.plugins.traffic-split", _no("upstream", ref)))
            transcode = route_plugins[route.id].get("grpc-transcode")
            if transcode is not None:
                self.issues.extend(_check_transcode(where, upstream, transcode.config, protos, config))

        consumers, consumer_plugins = self._consumers()
        if self.issues:
            raise ConfigError(self.issues)
        return LoadedConfig(
            config=config,
            protos=protos,
            route_plugins=route_plugins,
            global_plugins=global_plugins,
            consumer_plugins=consumer_plugins,
            consumers=consumers,
            base_dir=self.base_dir,
        )

    def _route_upstream(
        self, where: str, route: Route, service: Service | None, upstream_ids: set[str]
    ) -> Upstream | None:
        if route.upstream is not None:
            return route.upstream
        upstream_id = route.upstream_id
        if upstream_id is None and service is not None:
            if service.upstream is not None:
                return service.upstream
            upstream_id = service.upstream_id
        if upstream_id is None:
            if route.service_id is None or service is not None:
                message = "a route needs upstream or upstream_id (its own or its service's)"
                self.issues.append(ConfigIssue(where, message))
            return None
        if upstream_id not in upstream_ids:
            field_name = "upstream_id" if route.upstream_id is not None else "service_id"
            self.issues.append(ConfigIssue(f"{where}.{field_name}", _no("upstream", upstream_id)))
            return None
        return next(u for u in self.config.upstreams if u.id == upstream_id)

    def _check_tls(self) -> None:
        """Certificates, keys and CAs are read and cross-checked now: a bad one refuses the whole document."""
        # Imported here: the TLS modules import config.models, and this package imports the loader.
        from gateway.tls import TlsMaterialError, client_tls_of
        from gateway.tls_edge import ssl_issues

        config = self.config
        served: dict[str, str] = {}
        for index, ssl_object in enumerate(config.ssls):
            where = f"ssls[{index}]"
            self.issues.extend(ConfigIssue(f"{where}.{f}", m) for f, m in ssl_issues(ssl_object, self.base_dir))
            for sni in ssl_object.snis:
                if sni in served:
                    message = f"{sni!r} is served by ssl {served[sni]!r} already"
                    self.issues.append(ConfigIssue(f"{where}.snis", message))
                served.setdefault(sni, ssl_object.id)
        tls_listen = config.gateway.tls_listen
        if tls_listen is not None and tls_listen.fallback_sni is not None and config.ssls:
            name = tls_listen.fallback_sni.lower()
            if name not in served and f"*.{name.partition('.')[2]}" not in served:
                self.issues.append(ConfigIssue("gateway.tls_listen.fallback_sni", f"no ssl object serves {name!r}"))
        grpc_listen = config.gateway.grpc_listen
        if grpc_listen is not None and grpc_listen.tls:
            # A gRPC server cannot start TLS without a certificate (nor drop its last one later).
            if not config.ssls:
                message = "needs at least one ssls object: its certificate is what the listener serves"
                self.issues.append(ConfigIssue("gateway.grpc_listen.tls", message))
            elif grpc_listen.require_client_cert and not any(s.client is not None for s in config.ssls):
                message = "no ssls object has client.ca to verify client certificates with"
                self.issues.append(ConfigIssue("gateway.grpc_listen.require_client_cert", message))
        blocks = [(f"upstreams[{i}].tls", u.tls) for i, u in enumerate(config.upstreams)]
        blocks += [(f"routes[{i}].upstream.tls", r.upstream.tls) for i, r in enumerate(config.routes) if r.upstream]
        blocks += [(f"services[{i}].upstream.tls", s.upstream.tls) for i, s in enumerate(config.services) if s.upstream]
        blocks += [(f"plugin_runners[{i}].tls", r.tls) for i, r in enumerate(config.plugin_runners)]
        for where, block in blocks:
            if block is None:
                continue
            try:
                client_tls_of(block, self.base_dir)
            except TlsMaterialError as exc:
                self.issues.append(ConfigIssue(f"{where}.{exc.field}", exc.message))

    def _load_protos(self) -> dict[str, DescriptorIndex]:
        # Imported here: descriptor_sources imports config.models, and this package imports the loader.
        from gateway.descriptor_sources import SourceError, load_descriptor_index

        upstreams = {u.id: u for u in self.config.upstreams if u.id}
        protos: dict[str, DescriptorIndex] = {}
        for index, proto in enumerate(self.config.protos):
            try:
                loaded = load_descriptor_index(proto, self.base_dir, upstreams)
            except SourceError as exc:
                self.issues.append(ConfigIssue(f"protos[{index}].{exc.field}", exc.message))
                continue
            # None: an optional reflection source that did not answer; its routes wait for the watcher.
            if loaded is not None:
                protos[proto.id] = loaded
        return protos

    def _plugins(self, where: str, plugins: dict[str, Any], *, consumer: bool = False) -> dict[str, PluginSpec | None]:
        """Validate a plugins map. A disabled plugin (`_meta.disable`) maps to None, so that merging
        it over an inherited config (service, plugin_config, group) turns the inherited one off."""
        specs: dict[str, PluginSpec | None] = {}
        for name, raw in plugins.items():
            at = f"{where}.plugins.{name}"
            plugin = REGISTRY.get(name)
            if plugin is None:
                self.issues.append(ConfigIssue(at, _unknown_plugin(name)))
                continue
            values = dict(raw or {})
            meta_raw = values.pop("_meta", None)
            model = plugin.ConsumerConfig if consumer and plugin.ConsumerConfig is not None else plugin.Config
            meta = self._validate(PluginMeta, meta_raw or {}, f"{at}._meta")
            config = self._validate(model, values, at)
            if meta is None or config is None:
                continue
            if isinstance(config, ExtPluginConfig):
                runners = [runner.name for runner in self.config.plugin_runners]
                self.issues.extend(ConfigIssue(f"{at}.{field}", msg) for field, msg in runner_issues(config, runners))
            priority = meta.priority if meta.priority is not None else plugin.priority
            specs[name] = None if meta.disable else PluginSpec(plugin, config, priority)
        return specs

    def _validate(self, model: type[ModelT], values: Any, at: str) -> ModelT | None:
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            self.issues.extend(validation_issues(exc, model, values, at))
            return None

    def _consumers(self) -> tuple[ConsumerIndex, dict[str, dict[str, PluginSpec]]]:
        groups = {
            g.id: _enabled(self._plugins(f"consumer_groups[{i}]", g.plugins))
            for i, g in enumerate(self.config.consumer_groups)
        }
        built: list[Consumer] = []
        credentials: dict[str, dict[str, Consumer]] = {}
        extra_plugins: dict[str, dict[str, PluginSpec]] = {}
        for index, raw in enumerate(self.config.consumers):
            where = f"consumers[{index}]"
            specs = self._plugins(where, raw.plugins, consumer=True)
            if raw.group_id is not None and raw.group_id not in groups:
                self.issues.append(ConfigIssue(f"{where}.group_id", _no("consumer_group", raw.group_id)))
            consumer = Consumer(
                username=raw.username,
                group_id=raw.group_id,
                labels=dict(raw.labels),
                plugins={name: spec.config for name, spec in specs.items() if spec is not None},
            )
            built.append(consumer)
            runs: dict[str, PluginSpec] = dict(groups.get(raw.group_id or "", {}))
            for name, spec in specs.items():
                if spec is None:  # a consumer may turn off its group's plugin
                    runs.pop(name, None)
                    continue
                if spec.plugin.ConsumerConfig is None:
                    runs[name] = spec
                    continue
                credential = spec.plugin.consumer_credential(spec.config)
                if credential is None:
                    continue
                index_for = credentials.setdefault(name, {})
                if credential in index_for:
                    other = index_for[credential].username
                    self.issues.append(ConfigIssue(f"{where}.plugins.{name}", f"the same credential as {other!r}"))
                index_for[credential] = consumer
            extra_plugins[raw.username] = runs
        return ConsumerIndex(built, credentials), extra_plugins


def _enabled(specs: dict[str, PluginSpec | None]) -> dict[str, PluginSpec]:
    return {name: spec for name, spec in specs.items() if spec is not None}


def _no(kind: str, ident: str) -> str:
    return f"no {kind} has id {ident!r}"


def validation_issues(
    exc: ValidationError, model: type[BaseModel], document: Any, prefix: str = ""
) -> list[ConfigIssue]:
    """Pydantic's errors as issues: a path into the document as written, and a message a user can act on."""
    issues = []
    for err in exc.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            message = _unknown_field(str(loc[-1]), _field_names(model, loc[:-1]))
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = f"Input should be a mapping of fields, not {_describe(err['input'])}"
        elif err["type"] == "list_type":
            message = f"Input should be a list, not {_describe(err['input'])}"
        else:
            message = err["msg"]
        issues.append(ConfigIssue(_loc(loc, prefix, document), message))
    return issues


_MISSING = object()


def _loc(loc: Sequence[int | str], prefix: str = "", document: Any = _MISSING) -> str:
    """`routes[0].plugins.limit-count.count`, following the document as written where the models normalised it:
    a `{"host:port": weight}` node map is shown by its keys, one object written without its list has no index,
    and a scalar the models expanded (`listen: 9080`) ends the path."""
    out = prefix
    current = document
    for position, part in enumerate(loc):
        if isinstance(part, int):
            following = loc[position + 1] if position + 1 < len(loc) else None
            if isinstance(current, dict) and following in current:  # one object the models wrapped in a list
                continue
            if isinstance(current, dict) and part < len(current):  # a map the models turned into a list
                key = list(current)[part]
                out += f"[{key!r}]" if not isinstance(key, str) else f'["{key}"]'
                current = current[key]
                continue
            if current is not _MISSING and not isinstance(current, list):
                break  # a scalar the models expanded: the rest of the path is theirs, not the user's
            out += f"[{part}]"
            current = current[part] if isinstance(current, list) and part < len(current) else _MISSING
        else:
            if current is not _MISSING and not isinstance(current, dict | list):
                break
            out += f".{part}" if out else str(part)
            current = current.get(part, _MISSING) if isinstance(current, dict) else _MISSING
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unknown_field(name: str, known: list[str] | None) -> str:
    if not known:
        return "unknown field"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field (expected one of: {', '.join(known)})"


def _unknown_plugin(name: str) -> str:
    close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown plugin ({hint}known: {', '.join(sorted(REGISTRY))})"


def _field_names(model: type[BaseModel], loc: Sequence[int | str]) -> list[str] | None:
    """The field names a model accepts at `loc` (for "did you mean"), or None when the path leads elsewhere."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, int if isinstance(part, int) else str)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return None
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current, str)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return None


def _unwrap(annotation: Any, step: type) -> Any:
    """Strip Annotated and Optional; of a union, keep the member a step of this kind (index or key) can enter."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            fitting = [a for a in members if _enterable(a, step)]
            annotation = (fitting or members)[0]
        else:
            return annotation


def _enterable(annotation: Any, step: type) -> bool:
    origin = get_origin(annotation)
    if step is int:
        return origin is list
    return origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def _missing_id(index: int) -> ConfigIssue:
    return ConfigIssue(f"upstreams[{index}].id", "an upstream in the upstreams list needs an id")


def _unique_ids(kind: str, items: Sequence[Any], key: str = "id") -> Iterator[ConfigIssue]:
    seen: set[str] = set()
    for index, item in enumerate(items):
        value = getattr(item, key)
        if value in seen:
            yield ConfigIssue(f"{kind}[{index}].{key}", f"duplicate {key} {value!r}")
        seen.add(value)


def _check_transcode(
    where: str, upstream: Upstream | None, transcode: Any, protos: dict[str, DescriptorIndex], config: Config
) -> Iterator[ConfigIssue]:
    at = f"{where}.plugins.grpc-transcode"
    if upstream is not None and not upstream.is_grpc:
        yield ConfigIssue(f"{where}.upstream", "grpc-transcode needs an upstream with scheme grpc or grpcs")
    if transcode.proto_id not in {p.id for p in config.protos}:
        yield ConfigIssue(f"{at}.proto_id", _no("proto", transcode.proto_id))
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
