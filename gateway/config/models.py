"""Pydantic models of a protogate config document: gateway, routes, upstreams, protos."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

HttpMethod = Literal["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_ID = r"^[A-Za-z0-9_.\-]{1,64}$"


def _parse_size(value: Any) -> Any:
    """Accept nginx-style sizes ("8k", "1m") as well as plain byte counts."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"not a size: {value!r} (use bytes, or a number with k, m or g)")
        return int(match.group(1)) * _UNITS[match.group(2).lower()]
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
# A plugins map: plugin name -> its config; each value is validated by that plugin's model at load.
PluginMap = dict[str, dict[str, Any] | None]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenAddress(Model):
    host: str = "0.0.0.0"
    port: int = Field(default=9080, ge=0, le=65535)


def _parse_listen(value: Any) -> Any:
    if isinstance(value, int):
        return {"port": value}
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listen must be HOST:PORT or a port number, not {value!r}")
        return {"host": host.strip("[]") or "0.0.0.0", "port": int(port)}
    return value


class GatewaySettings(Model):
    """Process-wide settings (APISIX's config.yaml `apisix:` block, kept in the same file)."""

    listen: Annotated[ListenAddress, BeforeValidator(_parse_listen)] = ListenAddress()
    # The native gRPC listener (h2c): every call proxied by route; None serves no native gRPC.
    grpc_listen: Annotated[ListenAddress | None, BeforeValidator(_parse_listen)] = None
    client_max_body_size: ByteSize = 1024 * 1024
    max_uri_size: ByteSize = 8 * 1024
    max_header_size: ByteSize = 8 * 1024
    max_header_count: int = Field(default=100, ge=1)
    client_header_timeout: float = Field(default=60.0, gt=0)  # seconds for a whole request head (nginx's name)
    client_body_timeout: float = Field(default=60.0, gt=0)  # seconds between two reads of a request body (nginx)


class Node(Model):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=0)


def _parse_nodes(value: Any) -> Any:
    """APISIX writes nodes as {"host:port": weight}; a list of {host, port, weight} is also taken."""
    if isinstance(value, dict):
        nodes = []
        for address, weight in value.items():
            host, sep, port = str(address).rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"node address must be HOST:PORT, not {address!r}")
            nodes.append({"host": host.strip("[]"), "port": int(port), "weight": weight})
        return nodes
    return value


class Timeout(Model):
    """Seconds, as APISIX's upstream timeout: connect, send, read."""

    connect: float = Field(default=6.0, gt=0)
    send: float = Field(default=60.0, gt=0)
    read: float = Field(default=60.0, gt=0)


class Upstream(Model):
    id: str = Field(default="", pattern=r"^$|" + _ID)
    name: str | None = None
    scheme: Literal["http", "grpc"] = "http"
    type: Literal["roundrobin"] = "roundrobin"
    nodes: Annotated[list[Node], BeforeValidator(_parse_nodes), Field(min_length=1)]
    timeout: Timeout = Timeout()
    pass_host: Literal["pass", "node"] = "pass"

    @model_validator(mode="after")
    def _some_weight(self) -> Upstream:
        if not any(node.weight > 0 for node in self.nodes):
            raise ValueError("at least one node needs a weight above 0")
        return self


class Route(Model):
    id: str = Field(pattern=_ID)
    name: str | None = None
    uri: str | None = None
    uris: list[str] | None = None
    methods: list[HttpMethod] | None = None
    host: str | None = None
    hosts: list[str] | None = None
    priority: int = 0
    upstream_id: str | None = None
    upstream: Upstream | None = None
    service_id: str | None = None
    plugin_config_id: str | None = None
    plugins: PluginMap = Field(default_factory=dict)
    max_body_size: ByteSize | None = None  # None: the gateway's client_max_body_size
    enable: bool = True

    @field_validator("methods", mode="before")
    @classmethod
    def _upper_methods(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [m.upper() if isinstance(m, str) else m for m in value]
        return value

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None:
            _check_route_uri(value)
        return value

    @field_validator("uris")
    @classmethod
    def _check_uris(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("uris must not be empty")
            for uri in value:
                _check_route_uri(uri)
        return value

    @model_validator(mode="after")
    def _one_of_each(self) -> Route:
        if (self.uri is None) == (self.uris is None):
            raise ValueError("give exactly one of uri and uris")
        if self.host is not None and self.hosts is not None:
            raise ValueError("give at most one of host and hosts")
        if self.upstream is not None and self.upstream_id is not None:
            raise ValueError("give at most one of upstream and upstream_id")
        return self

    @property
    def all_uris(self) -> list[str]:
        return [self.uri] if self.uri is not None else list(self.uris or [])

    @property
    def all_hosts(self) -> list[str]:
        if self.host is not None:
            return [self.host]
        return list(self.hosts or [])


def _check_route_uri(uri: str) -> None:
    if not uri.startswith("/"):
        raise ValueError(f"uri must start with '/': {uri!r}")
    if "*" in uri[:-1]:
        raise ValueError(f"'*' may only end a uri (a prefix match such as /api/*): {uri!r}")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in uri):
        raise ValueError(f"uri has a space or control character: {uri!r}")


class Service(Model):
    """Shared settings of several routes (APISIX's service): plugins and upstream they inherit."""

    id: str = Field(pattern=_ID)
    name: str | None = None
    upstream_id: str | None = None
    upstream: Upstream | None = None
    plugins: PluginMap = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_upstream(self) -> Service:
        if self.upstream is not None and self.upstream_id is not None:
            raise ValueError("give at most one of upstream and upstream_id")
        return self


class PluginConfigSet(Model):
    """A reusable set of plugins that routes name with plugin_config_id (APISIX's plugin_configs)."""

    id: str = Field(pattern=_ID)
    desc: str | None = None
    plugins: PluginMap


class GlobalRule(Model):
    """Plugins that run for every request, before the route's own (APISIX's global_rules)."""

    id: str = Field(pattern=_ID)
    plugins: PluginMap


class Consumer(Model):
    username: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,100}$")
    desc: str | None = None
    group_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    plugins: PluginMap = Field(default_factory=dict)


class ConsumerGroup(Model):
    id: str = Field(pattern=_ID)
    desc: str | None = None
    plugins: PluginMap = Field(default_factory=dict)


class ReflectionSource(Model):
    """Descriptors read from a backend's gRPC server reflection (v1, else v1alpha), at load and on refresh."""

    upstream_id: str = Field(pattern=_ID)
    services: list[str] | None = Field(default=None, min_length=1)  # None: every service the backend lists
    refresh_interval: float = Field(default=30.0, ge=0)  # seconds; 0: only when a node reconnects
    timeout: float = Field(default=3.0, gt=0)  # seconds per node for connecting and fetching
    # False: start even when no node answers at load; the proto's routes answer 503 until a fetch works.
    required: bool = True


class Proto(Model):
    """One set of descriptors, from exactly one source: descriptor_set, proto_files or reflection."""

    id: str = Field(pattern=_ID)
    descriptor_set: str | None = Field(
        default=None, min_length=1, description="path to a FileDescriptorSet, relative to the config file"
    )
    proto_files: list[str] | None = Field(
        default=None, min_length=1, description=".proto files compiled at load, relative to the config file"
    )
    include_dirs: list[str] = Field(
        default_factory=list, description="import roots for proto_files (default: the config file's directory)"
    )
    reflection: ReflectionSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Proto:
        given = [name for name in ("descriptor_set", "proto_files", "reflection") if getattr(self, name) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of descriptor_set, proto_files and reflection{found}")
        if self.include_dirs and self.proto_files is None:
            raise ValueError("include_dirs only applies to proto_files")
        return self


class Config(Model):
    gateway: GatewaySettings = GatewaySettings()
    routes: list[Route] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    consumer_groups: list[ConsumerGroup] = Field(default_factory=list)
    plugin_configs: list[PluginConfigSet] = Field(default_factory=list)
    global_rules: list[GlobalRule] = Field(default_factory=list)
    protos: list[Proto] = Field(default_factory=list)
