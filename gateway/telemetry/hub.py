"""Telemetry: the app's tracing, metrics and access log, and where a request's telemetry starts and ends."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from gateway.telemetry.access_log import AccessLogWriter, access_entry
from gateway.telemetry.request import VAR, RequestRecord

if TYPE_CHECKING:
    from gateway.config.loader import LoadedConfig
    from gateway.context import RequestContext
    from gateway.pipeline import PluginChain
    from gateway.responses import ProxyResponse
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.tracing import Tracing

log = logging.getLogger("protogate.telemetry")

# Plugins that read a request's RequestRecord: with any of them configured, every request gets one.
RECORD_PLUGINS = frozenset({"opentelemetry", "prometheus", "http-logger"})


@dataclass(frozen=True)
class RouteInfo:
    uri: str
    host: str
    name: str


class Telemetry:
    """Built once per app from the loaded config. With nothing configured, `begin` and `finish` return at once."""

    def __init__(self, loaded: LoadedConfig) -> None:
        config = loaded.config
        settings = config.telemetry
        self.dropped: Counter[str] = Counter()
        self.routes = {
            route.id: RouteInfo(route.all_uris[0], (route.all_hosts or [""])[0], route.name or route.id)
            for route in config.routes
        }
        self.service_names = {service.id: service.name or service.id for service in config.services}
        used = set(loaded.global_plugins)
        for plugins in (*loaded.route_plugins.values(), *loaded.consumer_plugins.values()):
            used.update(plugins)

        from gateway.telemetry.tracing import tracing_wanted

        self.trace_all = tracing_wanted(settings.tracing)
        self.tracing: Tracing | None = None
        if self.trace_all or "opentelemetry" in used:
            from gateway.telemetry.tracing import Tracing

            self.tracing = Tracing(settings.tracing, on_drop=self._counter("otlp"))
        prometheus = settings.prometheus
        self.metrics: Metrics | None = None
        self.serve_metrics = prometheus.enabled if prometheus.enabled is not None else "prometheus" in used
        if self.serve_metrics or "prometheus" in used:
            from gateway.telemetry.metrics import Metrics

            self.metrics = Metrics(dropped=lambda: self.dropped)
            digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
            self.metrics.set_config_version(1, digest)
        self.access_log: AccessLogWriter | None = None
        if settings.access_log.enabled:
            access = settings.access_log
            self.access_log = AccessLogWriter(
                access.path, access.max_pending, access.flush_interval, self._counter("access-log")
            )
        self.per_request = self.tracing is not None or self.access_log is not None or bool(used & RECORD_PLUGINS)
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def _counter(self, sink: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            self.dropped[sink] += n

        return count

    def add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Something to flush and close when the app stops (an http-logger's sender)."""
        self._closers.append(close)

    # -- one request -----------------------------------------------------------------------------------------------

    def begin(self, ctx: RequestContext, chains: Sequence[PluginChain], *, rpc: bool = False) -> None:
        """Once the route is known (`chains`: global rules', route's): the request's record, and its server
        span when it is traced. `rpc`: a call on the native gRPC listener (named and described as gRPC)."""
        if not self.per_request:
            return
        record = RequestRecord(self, ctx.started, time.time_ns() - int((time.monotonic() - ctx.started) * 1e9))
        ctx.vars[VAR] = record
        if self.tracing is None:
            return
        plugin = _plugin(chains, "opentelemetry")
        if plugin is None and not self.trace_all:
            return
        route = self.routes.get(ctx.route_id)
        request = ctx.request
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
            "server.address": request.host.rsplit(":", 1)[0] if request.host else "",
            "client.address": ctx.client_ip,
            "network.protocol.version": f"{request.version.major}.{request.version.minor}",
            "protogate.route_id": ctx.route_id,
        }
        if route is not None:
            attributes["http.route"] = route.uri
        if request.query_string:
            attributes["url.query"] = request.query_string
        user_agent = request.headers.get("User-Agent")
        if user_agent:
            attributes["user_agent.original"] = user_agent
        if ctx.service_id:
            attributes["protogate.service_id"] = ctx.service_id
        parent = propagate.extract(request.headers)
        name = f"{request.method} {route.uri if route is not None else request.path}"
        if rpc:  # OpenTelemetry's RPC conventions: "package.Service/Method"
            name = ctx.path.lstrip("/")
            service, _, method = name.partition("/")
            attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        sampler = plugin.sampler if plugin is not None else None
        span = self.tracing.start_server_span(name, sampler, parent, attributes, record.start_ns)
        record.span = span
        record.context = trace.set_span_in_context(span, parent)
        # Current for this task, so code that knows nothing of ctx (a runner client) can inject_context().
        record.token = otel_context.attach(record.context)

    def finish(self, request: web.Request, ctx: RequestContext | None, response: ProxyResponse) -> None:
        """After the answer was sent: the server span ends and the access log gets its line. Never raises."""
        try:
            record: RequestRecord | None = ctx.vars.get(VAR) if ctx is not None else None
            if self.metrics is not None:
                self.metrics.requests.inc()
            if record is not None and record.span is not None:
                self._end_span(record, ctx, response)
            if self.access_log is not None:
                self.access_log.write(access_entry(request, ctx, response, record))
        except Exception:
            log.exception("telemetry of %s %s failed", request.method, request.path)

    def _end_span(self, record: RequestRecord, ctx: Any, response: ProxyResponse) -> None:
        span = record.span
        assert span is not None
        try:
            if span.is_recording():
                span.set_attribute("http.response.status_code", response.status)
                grpc_status = response.headers.get("grpc-status")
                if grpc_status is not None and grpc_status.isdigit():
                    span.set_attribute("rpc.grpc.status_code", int(grpc_status))
                if response.status >= 500:  # a 4xx is the client's error, not the server span's (semconv)
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", str(response.status))
                if ctx.consumer is not None:
                    span.set_attribute("protogate.consumer", ctx.consumer.username)
                plugin = _plugin(ctx.chains, "opentelemetry")
                if plugin is not None:
                    span.set_attributes(plugin.attributes(ctx))
        finally:
            record.close()
            span.end()

    # -- the app's lifecycle ---------------------------------------------------------------------------------------

    async def close(self) -> None:
        for close in self._closers:
            try:
                await close()
            except Exception:
                log.exception("closing a telemetry sink failed")
        if self.access_log is not None:
            await self.access_log.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def _plugin(chains: Sequence[PluginChain], name: str) -> Any:
    for chain in reversed(chains):  # the route's config wins over a global rule's
        instance = chain.instances.get(name)
        if instance is not None:
            return instance
    return None


async def telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: telemetry starts before the runtime and stops after it."""
    from gateway.keys import LOADED_CONFIG, TELEMETRY

    telemetry = Telemetry(app[LOADED_CONFIG])
    if telemetry.access_log is not None:
        telemetry.access_log.start()
    app[TELEMETRY] = telemetry
    yield
    await telemetry.close()


async def start_metrics_endpoint(app: web.Application) -> web.AppRunner | None:
    """The metrics listener (its own port), when metrics are on; prints where it listens. Raises OSError."""
    from gateway.keys import LOADED_CONFIG, TELEMETRY
    from gateway.telemetry.metrics import metrics_app

    telemetry = app[TELEMETRY]
    if telemetry.metrics is None or not telemetry.serve_metrics:
        return None
    settings = app[LOADED_CONFIG].config.telemetry.prometheus
    runner = web.AppRunner(metrics_app(telemetry.metrics, settings.export_uri), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.export_addr.host, settings.export_addr.port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    host, port = server.sockets[0].getsockname()[:2] if server is not None and server.sockets else ("?", 0)  # type: ignore[union-attr]
    shown = f"[{host}]" if ":" in host else host
    print(f"protogate metrics on http://{shown}:{port}{settings.export_uri}", flush=True)
    return runner
