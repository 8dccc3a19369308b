"""Runtime: a loaded config compiled into a route table, plugin chains and live upstream clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway.config.loader import LoadedConfig
from gateway.config.models import Route, Timeout, Upstream
from gateway.consumers import Consumer
from gateway.context import RequestContext
from gateway.descriptor_sources import reflection_tls, upstream_addresses
from gateway.errors import GatewayError
from gateway.grpc_web import GrpcWebSwitch, GrpcWebTarget
from gateway.openapi_endpoint import openapi_json, openapi_location
from gateway.pipeline import PluginChain
from gateway.plugins.base import Plugin, PluginSpec
from gateway.plugins.grpc_transcode import GrpcTranscodeConfig
from gateway.responses import ProxyResponse
from gateway.router import RouteSpec, RouteTable
from gateway.transcode import TranscodeTarget
from gateway.upstream.grpc import GrpcUpstream
from gateway.upstream.http import HttpUpstream
from gateway.upstream.reflection import ReflectionWatcher
from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError

log = logging.getLogger("protogate.runtime")


class RouteTarget(Protocol):
    """What answers a route once its request phases passed: the upstream, reached one way or another."""

    async def handle(self, ctx: RequestContext) -> ProxyResponse: ...


@dataclass
class CompiledRoute:
    route_id: str
    service_id: str | None
    target: RouteTarget
    chain: PluginChain
    body_limit: int
    # A consumer's own plugins merged over the route's, built on first use per consumer.
    consumer_chains: dict[str, PluginChain] = field(default_factory=dict)
    # One instance per consumer-side PluginSpec on this route: a group's limit is shared by its members.
    consumer_instances: dict[int, Plugin] = field(default_factory=dict)

    def chain_for(self, consumer: Consumer | None, consumer_plugins: dict[str, dict]) -> PluginChain:
        if consumer is None:
            return self.chain
        extra = consumer_plugins.get(consumer.username)
        if not extra:
            return self.chain
        chain = self.consumer_chains.get(consumer.username)
        if chain is None:
            chain = self.consumer_chains[consumer.username] = self.chain.with_overrides(extra, self._instance_for)
        return chain

    def _instance_for(self, spec: PluginSpec) -> Plugin:
        instance = self.consumer_instances.get(id(spec))
        if instance is None:
            instance = self.consumer_instances[id(spec)] = spec.plugin(spec.config)
        return instance


class HttpProxyTarget:
    def __init__(
        self,
        upstream: HttpUpstream,
        timeout: Timeout | None = None,
        override: Callable[[Upstream | str], HttpUpstream] | None = None,
    ) -> None:
        self.upstream = upstream
        self.timeout = timeout  # the route's, over the upstream's
        self.override = override  # the client of the upstream traffic-split chose

    async def handle(self, ctx: RequestContext) -> ProxyResponse:
        upstream = self.upstream
        if ctx.upstream_override is not None and self.override is not None:
            upstream = self.override(ctx.upstream_override)
        return await upstream.proxy(ctx, self.timeout)


class Runtime:
    """Built inside the event loop (channels and sessions bind to it); closed when replaced."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        settings = loaded.config.gateway
        self.consumers = loaded.consumers
        self.consumer_plugins = loaded.consumer_plugins
        self.global_chain = PluginChain.build(loaded.global_plugins.values())
        self._grpc: dict[int, GrpcUpstream] = {}
        self._http: dict[int, HttpUpstream] = {}
        self._transcoders: dict[str, list[TranscodeTarget]] = {}  # proto id -> the routes' targets that use it
        self._watchers: list[ReflectionWatcher] = []
        self._route_timeouts = {r.id: r.timeout for r in loaded.config.routes if r.timeout is not None}
        specs: list[RouteSpec[CompiledRoute]] = []
        for route in loaded.config.routes:
            if not route.enable:
                continue
            body_limit = route.max_body_size if route.max_body_size is not None else settings.client_max_body_size
            plugins = loaded.route_plugins.get(route.id, {})
            compiled = CompiledRoute(
                route_id=route.id,
                service_id=route.service_id,
                target=self._target(route, loaded.upstream_of(route)),
                chain=PluginChain.build(plugins.values()),
                body_limit=body_limit,
            )
            specs.append(RouteSpec(route.all_uris, route.methods, route.all_hosts, route.priority, compiled))
        self.table: RouteTable[CompiledRoute] = RouteTable.compile(specs)
        self._watch_reflected_protos()

    def _watch_reflected_protos(self) -> None:
        upstreams = {u.id: u for u in self.loaded.config.upstreams}
        for proto in self.loaded.config.protos:
            source = proto.reflection
            if source is None or proto.id not in self._transcoders:
                continue
            upstream = upstreams[source.upstream_id]
            watcher = ReflectionWatcher(
                proto.id,
                upstream_addresses(upstream),
                functools.partial(self._apply_descriptors, proto.id),
                services=source.services,
                interval=source.refresh_interval,
                timeout=source.timeout,
                current=self.loaded.protos.get(proto.id),
                tls=reflection_tls(upstream, self.loaded.base_dir),  # checked at load; read again, as upstreams do
            )
            watcher.start()
            self._watchers.append(watcher)

    def _apply_descriptors(self, proto_id: str, index: DescriptorIndex) -> None:
        for target in self._transcoders.get(proto_id, ()):
            try:
                target.swap(index)
            except TranscodeError as exc:  # the route's service or method is gone: it keeps the old descriptors
                log.warning("proto %s: a route kept its descriptors: %s", proto_id, exc.message)

    def _target(self, route: Route, upstream: Upstream) -> RouteTarget:
        route_id = route.id
        transcode = self.loaded.plugin_config(route_id, "grpc-transcode")
        if isinstance(transcode, GrpcTranscodeConfig):
            index = self.loaded.protos.get(transcode.proto_id)  # None: reflection, required: false, backend down
            client = self._grpc_upstream(upstream)
            openapi = None
            if transcode.openapi and index is not None and (location := openapi_location(route)) is not None:
                openapi = (location, openapi_json(self.loaded, route))  # built once, served as is
            transcoder = TranscodeTarget(transcode, index, client, openapi=openapi)
            self._transcoders.setdefault(transcode.proto_id, []).append(transcoder)
            transcoder.override = self.grpc_client_for
            if route.timeout is not None and transcode.deadline is None:
                transcoder.timeout = route.timeout.read  # the route's read timeout is its unary calls' deadline
            # JSON is transcoded; gRPC-Web requests on the same route pass through as they are.
            return GrpcWebSwitch(GrpcWebTarget(client), transcoder)
        if upstream.is_grpc:
            return GrpcWebTarget(self._grpc_upstream(upstream))
        return HttpProxyTarget(self._http_upstream(upstream), self._route_timeouts.get(route_id), self.http_client_for)

    # Upstreams shared by several routes (upstream_id) share one set of channels or one pool.
    def _grpc_upstream(self, upstream: Upstream) -> GrpcUpstream:
        client = self._grpc.get(id(upstream))
        if client is None:
            client = self._grpc[id(upstream)] = GrpcUpstream(upstream, base_dir=self.loaded.base_dir)
        return client

    def _http_upstream(self, upstream: Upstream) -> HttpUpstream:
        client = self._http.get(id(upstream))
        if client is None:
            client = self._http[id(upstream)] = HttpUpstream(upstream, base_dir=self.loaded.base_dir)
        return client

    # traffic-split names an upstream by id or carries one inline; either gets a client on first use.
    def upstream_by_ref(self, ref: Upstream | str) -> Upstream:
        if isinstance(ref, str):
            found = next((u for u in self.loaded.config.upstreams if u.id == ref), None)
            if found is None:
                logging.getLogger("protogate.runtime").error("traffic-split names upstream %r: not configured", ref)
                raise GatewayError.internal()
            return found
        return ref

    def http_client_for(self, ref: Upstream | str) -> HttpUpstream:
        return self._http_upstream(self.upstream_by_ref(ref))

    def grpc_client_for(self, ref: Upstream | str) -> GrpcUpstream:
        return self._grpc_upstream(self.upstream_by_ref(ref))

    def upstream_health(self) -> dict[str, list[dict[str, object]]]:
        """Each live upstream's nodes with their health and load, by id (or name, for inline ones)."""
        clients: list[GrpcUpstream | HttpUpstream] = [*self._grpc.values(), *self._http.values()]
        return {c.upstream.id or c.upstream.name or f"inline-{i}": c.node_set.snapshot() for i, c in enumerate(clients)}

    # Requests and calls that started on this runtime (hot reload closes a replaced one after the last).
    _users: int = 0
    _drained: asyncio.Event | None = None

    @contextlib.contextmanager
    def in_use(self) -> Iterator[Runtime]:
        """Hold this runtime open for one request or call, however it ends."""
        self.enter()
        try:
            yield self
        finally:
            self.leave()

    # enter() and leave() are in_use() without a generator, for the HTTP edge's every request.
    def enter(self) -> None:
        self._users += 1

    def leave(self) -> None:
        self._users -= 1
        if self._users == 0 and self._drained is not None:
            self._drained.set()

    @property
    def users(self) -> int:
        return self._users

    async def retire(self) -> None:
        """Close once every request that started on this runtime has finished (it was replaced)."""
        if self._users:
            self._drained = asyncio.Event()
            await self._drained.wait()
        await self.close()

    async def close(self) -> None:
        for watcher in self._watchers:
            await watcher.close()
        for grpc_client in self._grpc.values():
            await grpc_client.close()
        for http_client in self._http.values():
            await http_client.close()
