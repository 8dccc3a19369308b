"""Runtime: a loaded config compiled into a route table with live upstream clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from gateway.config.loader import LoadedConfig
from gateway.config.models import Route, Upstream
from gateway.context import RequestContext
from gateway.plugins.grpc_transcode import GrpcTranscodeConfig
from gateway.router import RouteSpec, RouteTable
from gateway.transcode import TranscodeTarget
from gateway.upstream.grpc import GrpcUpstream
from gateway.upstream.http import HttpUpstream


class RouteTarget(Protocol):
    async def handle(self, ctx: RequestContext) -> web.StreamResponse: ...


@dataclass(frozen=True)
class CompiledRoute:
    route_id: str
    target: RouteTarget


class HttpProxyTarget:
    def __init__(self, upstream: HttpUpstream, body_limit: int) -> None:
        self.upstream = upstream
        self.body_limit = body_limit

    async def handle(self, ctx: RequestContext) -> web.StreamResponse:
        return await self.upstream.proxy(ctx.request, ctx.path, ctx.query, self.body_limit)


class Runtime:
    """Built inside the event loop (channels and sessions bind to it); closed when replaced."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        settings = loaded.config.gateway
        self._grpc: dict[int, GrpcUpstream] = {}
        self._http: dict[int, HttpUpstream] = {}
        specs: list[RouteSpec[CompiledRoute]] = []
        for route in loaded.config.routes:
            if not route.enable:
                continue
            body_limit = route.max_body_size if route.max_body_size is not None else settings.client_max_body_size
            target = self._target(route, loaded.upstream_of(route), body_limit)
            compiled = CompiledRoute(route.id, target)
            specs.append(RouteSpec(route.all_uris, route.methods, route.all_hosts, route.priority, compiled))
        self.table: RouteTable[CompiledRoute] = RouteTable.compile(specs)

    def _target(self, route: Route, upstream: Upstream, body_limit: int) -> RouteTarget:
        transcode = self.loaded.plugin_configs.get(route.id, {}).get("grpc-transcode")
        if isinstance(transcode, GrpcTranscodeConfig):
            index = self.loaded.protos[transcode.proto_id]
            return TranscodeTarget(transcode, index, self._grpc_upstream(upstream), body_limit)
        return HttpProxyTarget(self._http_upstream(upstream), body_limit)

    # Upstreams shared by several routes (upstream_id) share one set of channels or one pool.
    def _grpc_upstream(self, upstream: Upstream) -> GrpcUpstream:
        client = self._grpc.get(id(upstream))
        if client is None:
            client = self._grpc[id(upstream)] = GrpcUpstream(upstream)
        return client

    def _http_upstream(self, upstream: Upstream) -> HttpUpstream:
        client = self._http.get(id(upstream))
        if client is None:
            client = self._http[id(upstream)] = HttpUpstream(upstream)
        return client

    async def close(self) -> None:
        for grpc_client in self._grpc.values():
            await grpc_client.close()
        for http_client in self._http.values():
            await http_client.close()
