"""Pydantic models of a protogate config document: gateway, routes, upstreams, protos."""

from __future__ import annotations

import base64
import ipaddress
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


class ListenEntry(ListenAddress):
    """One edge listener: plain HTTP, or HTTPS with the `ssls` certificates (chosen by SNI) when `tls` is set."""

    tls: bool = False


def _parse_listens(value: Any) -> Any:
    """`listen` is one address (HOST:PORT, a port, {host, port, tls}) or a list of them."""
    items = value if isinstance(value, list) else [value]
    return [_parse_listen(item) for item in items]


class Hsts(Model):
    """Strict-Transport-Security on every answer over HTTPS (APISIX has no built-in for it)."""

    max_age: int = Field(default=31536000, ge=0)  # seconds
    include_subdomains: bool = False
    preload: bool = False


class TlsListen(Model):
    """The HTTPS listener: certificates come from the `ssls` objects, chosen per connection by SNI."""

    host: str = "0.0.0.0"
    port: int = Field(default=9443, ge=0, le=65535)
    # Clients without SNI (or with an unknown name) get the ssl object that lists this name; None: the first one.
    fallback_sni: str | None = None
    hsts: Hsts | None = None


class GrpcListen(ListenAddress):
    """The native gRPC listener: h2c, or TLS with the `ssls` certificates (chosen by SNI) when `tls` is set."""

    port: int = Field(default=9090, ge=0, le=65535)
    tls: bool = False
    # gRPC servers cannot ask for an optional client certificate: either every connection presents one
    # signed by some ssls object's client.ca, or none is asked for (mTLS hosts then refuse every call).
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_cert_needs_tls(self) -> GrpcListen:
        if self.require_client_cert and not self.tls:
            raise ValueError("require_client_cert needs tls: true")
        return self


class GatewaySettings(Model):
    """Process-wide settings (APISIX's config.yaml `apisix:` block, kept in the same file)."""

    # The edge's listeners, plain and HTTPS (`tls: true`), as APISIX's node_listen and ssl.listen.
    listen: Annotated[list[ListenEntry], BeforeValidator(_parse_listens), Field(min_length=1)] = Field(
        default_factory=lambda: [ListenEntry()]
    )
    # The HTTPS settings (fallback_sni, hsts); its host and port are one more HTTPS listener, unless `listen`
    # has tls entries and no port is given here. None and no tls entry: no HTTPS listener.
    tls_listen: Annotated[TlsListen | None, BeforeValidator(_parse_listen)] = None
    # The native gRPC listener (h2c, or TLS): every call proxied by route; None serves no native gRPC.
    grpc_listen: Annotated[GrpcListen | None, BeforeValidator(_parse_listen)] = None
    # Liveness and readiness (GET /status, /status/ready) on a port of their own; None: not served.
    status_listen: Annotated[ListenAddress | None, BeforeValidator(_parse_listen)] = None
    client_max_body_size: ByteSize = 1024 * 1024
    max_uri_size: ByteSize = 8 * 1024
    max_header_size: ByteSize = 8 * 1024
    max_header_count: int = Field(default=100, ge=1)
    client_header_timeout: float = Field(default=60.0, gt=0)  # seconds for a whole request head (nginx's name)
    client_body_timeout: float = Field(default=60.0, gt=0)  # seconds between two reads of a request body (nginx)

    @model_validator(mode="after")
    def _distinct_addresses(self) -> GatewaySettings:
        seen: set[tuple[str, int]] = set()
        others = [(a.host, a.port) for a in (self.grpc_listen, self.status_listen) if a is not None]
        for host, port in [*self.http_addresses(), *self.https_addresses(), *others]:
            if port and (host, port) in seen:
                raise ValueError(f"{host}:{port} is listed twice among the listeners")
            seen.add((host, port))
        return self

    def http_addresses(self) -> list[tuple[str, int]]:
        return [(entry.host, entry.port) for entry in self.listen if not entry.tls]

    def https_addresses(self) -> list[tuple[str, int]]:
        addresses = [(entry.host, entry.port) for entry in self.listen if entry.tls]
        tls = self.tls_listen
        if tls is not None and (not addresses or "port" in tls.model_fields_set):
            addresses.append((tls.host, tls.port))
        return addresses


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


# lua-resty-healthcheck's defaults, which APISIX's checks object documents.
_HEALTHY_STATUSES = [200, 302]
_UNHEALTHY_STATUSES = [429, 404, 500, 501, 502, 503, 504, 505]
HttpStatus = Annotated[int, Field(ge=200, le=599)]


class ActiveHealthy(Model):
    interval: float = Field(default=1.0, gt=0)  # seconds between probes of a healthy node
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(_HEALTHY_STATUSES), min_length=1)
    successes: int = Field(default=2, ge=1, le=254)


class ActiveUnhealthy(Model):
    interval: float = Field(default=1.0, gt=0)  # seconds between probes of an unhealthy node
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(_UNHEALTHY_STATUSES), min_length=1)
    http_failures: int = Field(default=5, ge=1, le=254)
    tcp_failures: int = Field(default=2, ge=1, le=254)
    timeouts: int = Field(default=3, ge=1, le=254)


class ActiveCheck(Model):
    """Probes sent to every node on a timer: an HTTP(S) GET, a TCP connect, or grpc.health.v1 Check."""

    type: Literal["http", "https", "tcp", "grpc"] = "http"
    timeout: float = Field(default=1.0, gt=0)
    http_path: str = Field(default="/", pattern=r"^/")
    host: str | None = None  # Host header of HTTP probes (default: the node's address)
    port: int | None = Field(default=None, ge=1, le=65535)  # probe this port instead of the node's
    https_verify_certificate: bool = True
    req_headers: list[str] = Field(default_factory=list)  # "Name: value" lines, as APISIX
    grpc_service: str = ""  # the service name asked about; "" is the server as a whole
    healthy: ActiveHealthy = ActiveHealthy()
    unhealthy: ActiveUnhealthy = ActiveUnhealthy()


class PassiveHealthy(Model):
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: [*range(200, 300), *range(300, 309)], min_length=1)
    successes: int = Field(default=5, ge=0, le=254)


class PassiveUnhealthy(Model):
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: [429, 500, 503], min_length=1)
    http_failures: int = Field(default=5, ge=0, le=254)
    tcp_failures: int = Field(default=2, ge=0, le=254)
    timeouts: int = Field(default=7, ge=0, le=254)


class PassiveCheck(Model):
    """Real answers counted per node; they mark nodes unhealthy, active probes bring them back."""

    type: Literal["http", "https", "tcp"] = "http"
    healthy: PassiveHealthy = PassiveHealthy()
    unhealthy: PassiveUnhealthy = PassiveUnhealthy()


class HealthChecks(Model):
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = None

    @model_validator(mode="after")
    def _active_with_passive(self) -> HealthChecks:
        if self.passive is not None and self.active is None:
            # As APISIX: only an active probe can bring back a node that passive checks took out.
            raise ValueError("passive checks need active checks too (they bring nodes back)")
        if self.active is None:
            raise ValueError("give active checks (and optionally passive ones)")
        return self


class KeepalivePool(Model):
    """HTTP connections kept open to an upstream (APISIX's keepalive_pool)."""

    size: int = Field(default=320, ge=1)
    idle_timeout: float = Field(default=60.0, ge=0)  # seconds an idle connection is kept
    requests: int = Field(default=1000, ge=1)  # accepted for APISIX compatibility; aiohttp has no such limit


HashOn = Literal["vars", "header", "cookie", "consumer", "vars_combinations"]


class UpstreamTls(Model):
    """TLS to the nodes (scheme https or grpcs). Paths are relative to the config file; PEM may be inline."""

    ca: str | None = Field(default=None, min_length=1)  # None: the system's trust store
    client_cert: str | None = Field(default=None, min_length=1)  # mutual TLS to the backend
    client_key: str | None = Field(default=None, min_length=1, repr=False)
    key_passphrase_env: str | None = Field(default=None, min_length=1)  # environment variable with the passphrase
    server_name: str | None = Field(default=None, min_length=1)  # checked in the certificate; None: the node's host
    verify: bool = True  # false is logged when the upstream is built (https only; gRPC always verifies)

    @model_validator(mode="after")
    def _cert_with_key(self) -> UpstreamTls:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


class Upstream(Model):
    id: str = Field(default="", pattern=r"^$|" + _ID)
    name: str | None = None
    scheme: Literal["http", "https", "grpc", "grpcs"] = "http"
    tls: UpstreamTls | None = None  # for https and grpcs; None: verify against the system's CAs
    type: Literal["roundrobin", "chash", "least_conn", "ewma"] = "roundrobin"
    # chash: what the key is read from; `key` is a variable name (vars), a header or cookie name,
    # or a `$var` template (vars_combinations); ignored for hash_on consumer.
    hash_on: HashOn = "vars"
    key: str = "remote_addr"
    nodes: Annotated[list[Node], BeforeValidator(_parse_nodes), Field(min_length=1)]
    timeout: Timeout = Timeout()
    pass_host: Literal["pass", "node"] = "pass"
    checks: HealthChecks | None = None
    # Further nodes tried after a failed attempt; None: one fewer than the nodes (APISIX's default).
    retries: int | None = Field(default=None, ge=0)
    retry_timeout: float = Field(default=0.0, ge=0)  # seconds for all tries together; 0: no limit
    # A non-idempotent request (POST, PATCH) or a body already streamed out is only retried when set.
    retry_non_idempotent: bool = False
    keepalive_pool: KeepalivePool = KeepalivePool()

    @model_validator(mode="after")
    def _some_weight(self) -> Upstream:
        if not any(node.weight > 0 for node in self.nodes):
            raise ValueError("at least one node needs a weight above 0")
        if self.type == "chash" and self.hash_on != "consumer":
            _check_hash_key(self.hash_on, self.key)
        active = self.checks.active if self.checks is not None else None
        if active is not None and active.type == "grpc" and not self.is_grpc:
            raise ValueError("grpc health checks need an upstream with scheme grpc or grpcs")
        if self.tls is not None and self.scheme not in ("https", "grpcs"):
            raise ValueError("tls applies to scheme https or grpcs")
        if self.tls is not None and self.scheme == "grpcs" and not self.tls.verify:
            raise ValueError("grpcs always verifies the backend's certificate: give its CA in tls.ca instead")
        return self

    @property
    def is_grpc(self) -> bool:
        return self.scheme in ("grpc", "grpcs")


def _check_hash_key(hash_on: str, key: str) -> None:
    # Imported here: the plugins package imports this module.
    from gateway.plugins.variables import check_template, is_known_var

    if not key:
        raise ValueError("chash needs a key")
    if hash_on == "vars" and not is_known_var(key):
        raise ValueError(f"chash key {key!r} is not a known variable")
    if hash_on == "vars_combinations":
        check_template(key)


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
    timeout: Timeout | None = None  # None: the upstream's
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
    # A FileDescriptorSet carried in the document itself (the Admin API's upload; stored with the resource).
    descriptor_set_base64: str | None = Field(
        default=None, min_length=1, description="a FileDescriptorSet, base64-encoded (RFC 4648, standard alphabet)"
    )

    @field_validator("descriptor_set_base64")
    @classmethod
    def _check_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode("".join(value.split()), validate=True)
            except ValueError:
                raise ValueError("not valid base64") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Proto:
        sources = ("descriptor_set", "descriptor_set_base64", "proto_files", "reflection")
        given = [name for name in sources if getattr(self, name) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise ValueError(
                f"give exactly one of descriptor_set, descriptor_set_base64, proto_files and reflection{found}"
            )
        if self.include_dirs and self.proto_files is None:
            raise ValueError("include_dirs only applies to proto_files")
        return self


class OtlpBatch(Model):
    """BatchSpanProcessor settings; unset fields fall back to OTEL_BSP_* and then the SDK's defaults."""

    max_queue_size: int | None = Field(default=None, ge=1)
    max_export_batch_size: int | None = Field(default=None, ge=1)
    schedule_delay: float | None = Field(default=None, gt=0)  # seconds between exports
    export_timeout: float | None = Field(default=None, gt=0)  # seconds per export, retries included

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> OtlpBatch:
        if self.max_queue_size and self.max_export_batch_size and self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self


class TracingSettings(Model):
    """OTLP trace export. Unset fields fall back to the standard OTEL_* environment variables."""

    # None: on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set; routes with the opentelemetry plugin trace anyway.
    enabled: bool | None = None
    service_name: str | None = None
    endpoint: str | None = None
    protocol: Literal["grpc", "http/protobuf"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    batch: OtlpBatch = OtlpBatch()


class PrometheusSettings(Model):
    """The metrics endpoint (APISIX's plugin_attr.prometheus): its own listener, never the gateway's."""

    enabled: bool | None = None  # None: on when a prometheus plugin is configured anywhere
    export_addr: Annotated[ListenAddress, BeforeValidator(_parse_listen)] = ListenAddress(host="127.0.0.1", port=9091)
    export_uri: str = Field(default="/protogate/prometheus/metrics", pattern=r"^/[!-~]*$")


class AccessLogSettings(Model):
    """One JSON line per request, written by a background task, never on the request path."""

    enabled: bool = False
    path: str | None = None  # None or "-": stdout
    max_pending: int = Field(default=10_000, ge=1)  # lines queued beyond this are dropped and counted
    flush_interval: float = Field(default=0.5, gt=0)  # seconds


class TelemetrySettings(Model):
    tracing: TracingSettings = TracingSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    access_log: AccessLogSettings = AccessLogSettings()


class RunnerTls(Model):
    """TLS to a runner on a TCP address: the CA that signed its certificate and the gateway's client certificate."""

    ca: str | None = Field(default=None, min_length=1)  # None: the system's trust store
    client_cert: str | None = Field(default=None, min_length=1)
    client_key: str | None = Field(default=None, min_length=1, repr=False)
    key_passphrase_env: str | None = Field(default=None, min_length=1)
    server_name: str | None = Field(default=None, min_length=1)  # None: the address's host

    @model_validator(mode="after")
    def _cert_with_key(self) -> RunnerTls:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


class PluginRunner(Model):
    """An external plugin runner: a process the gateway starts and supervises, or (dev) one started by hand."""

    name: str = Field(pattern=_ID)
    cmd: list[str] | None = Field(default=None, min_length=1)  # argv; optional in dev mode
    # "unix:/path.sock" or "HOST:PORT"; None: a socket in a private (0700) directory the gateway creates
    address: str | None = None
    env: dict[str, str] = Field(default_factory=dict)  # added to the gateway's environment
    cwd: str | None = None  # working directory of cmd, relative to the config file; None: the gateway's
    # A runner the developer started by hand on a fixed address: used as is, never spawned or restarted.
    dev: bool = False
    start_timeout: float = Field(default=10.0, gt=0)  # seconds to answer SERVING after a (re)start
    conf_expiry: float = Field(default=0.0, ge=0)  # PROTOGATE_CONF_EXPIRY: idle tokens may be forgotten; 0: never
    max_restart_delay: float = Field(default=10.0, gt=0)  # cap of the exponential restart backoff, seconds
    tls: RunnerTls | None = None  # only for a HOST:PORT address

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("unix:"):
            if not value.removeprefix("unix:").lstrip("/"):
                raise ValueError("a unix address needs a socket path: unix:/path/runner.sock")
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"address must be unix:/path.sock or HOST:PORT with a port above 0, not {value!r}")
        return value

    @model_validator(mode="after")
    def _cmd_or_dev(self) -> PluginRunner:
        if self.dev and self.address is None:
            raise ValueError("a dev runner needs the address it was started on")
        if not self.dev and self.cmd is None:
            raise ValueError("give cmd (the runner's argv), or set dev: true for a runner started by hand")
        if self.tls is not None and (self.address is None or self.address.startswith("unix:")):
            raise ValueError("tls needs a HOST:PORT address (a unix socket needs no TLS)")
        return self


class StoreSettings(Model):
    """Where the resources live. standalone: this file (read-only Admin API, watched); file: a data file the
    Admin API owns; etcd: a cluster's shared store."""

    type: Literal["standalone", "file", "etcd"] = "standalone"
    path: str | None = Field(default=None, min_length=1)  # file: the data file, relative to the config file
    endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:2379"], min_length=1)  # etcd
    prefix: str = "/protogate"  # etcd: every key lives under it
    timeout: float = Field(default=5.0, gt=0)  # etcd: seconds per request
    username: str | None = None  # etcd auth (with password)
    password: str | None = Field(default=None, repr=False)
    poll_interval: float = Field(default=1.0, gt=0)  # standalone and file: seconds between checks of the file

    @model_validator(mode="after")
    def _fields_of_type(self) -> StoreSettings:
        if self.type == "file" and self.path is None:
            raise ValueError("a file store needs path (the data file the Admin API writes)")
        if self.type != "file" and self.path is not None:
            raise ValueError("path only applies to type: file")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


def _parse_cidr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {value!r}") from None
    return value


class AdminSettings(Model):
    """The Admin API: its own listener, an admin key on every call, callers limited to allow_admin."""

    listen: Annotated[ListenAddress, BeforeValidator(_parse_listen)] = ListenAddress(host="127.0.0.1", port=9180)
    # Compared in constant time. None: refused on a non-loopback listen; generated and printed once on loopback.
    key: str | None = Field(default=None, min_length=8, repr=False)
    # Socket peers allowed to call (forwarded headers never count); APISIX's default is loopback only.
    allow_admin: list[Annotated[str, BeforeValidator(_parse_cidr)]] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )


_SNI = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class SslClient(Model):
    """Mutual TLS: clients of these SNIs must present a certificate signed by `ca`."""

    ca: str = Field(min_length=1)  # PEM or a path relative to the config file
    depth: int = Field(default=1, ge=0, le=16)  # intermediates allowed between the client's certificate and ca
    # Paths (regexes, matched against the normalised path) served without a client certificate.
    skip_mtls_uri_regex: list[str] = Field(default_factory=list)

    @field_validator("skip_mtls_uri_regex")
    @classmethod
    def _check_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {pattern!r}: {exc}") from None
        return value


class Ssl(Model):
    """A certificate of the HTTPS listener, chosen by SNI (APISIX's ssl object)."""

    id: str = Field(pattern=_ID)
    cert: str = Field(min_length=1)  # PEM or a path: the leaf first, then intermediates
    key: str = Field(min_length=1, repr=False)  # PEM or a path
    key_passphrase_env: str | None = Field(default=None, min_length=1)  # environment variable with the passphrase
    snis: list[str] = Field(min_length=1)  # host names; "*.example.com" matches one label
    client: SslClient | None = None

    @field_validator("snis", mode="before")
    @classmethod
    def _lower_snis(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [s.lower().rstrip(".") if isinstance(s, str) else s for s in value]
        return value

    @field_validator("snis")
    @classmethod
    def _check_snis(cls, value: list[str]) -> list[str]:
        for sni in value:
            if not _SNI.match(sni):
                raise ValueError(f"not a host name or *.wildcard: {sni!r}")
        return value


class Config(Model):
    gateway: GatewaySettings = GatewaySettings()
    store: StoreSettings = StoreSettings()
    admin: AdminSettings | None = None  # None: no Admin API
    routes: list[Route] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    consumer_groups: list[ConsumerGroup] = Field(default_factory=list)
    plugin_configs: list[PluginConfigSet] = Field(default_factory=list)
    global_rules: list[GlobalRule] = Field(default_factory=list)
    protos: list[Proto] = Field(default_factory=list)
    telemetry: TelemetrySettings = TelemetrySettings()
    plugin_runners: list[PluginRunner] = Field(default_factory=list)
    ssls: list[Ssl] = Field(default_factory=list)
