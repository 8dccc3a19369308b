"""PluginChain: a route's plugins ordered once; runs the request, response and log phases."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginSpec
from gateway.responses import ProxyResponse, Reply

if TYPE_CHECKING:
    from gateway.consumers import Consumer

log = logging.getLogger("protogate.pipeline")

RequestHook = Callable[[RequestContext], Awaitable[Reply | None]]
ResponseHook = Callable[[RequestContext, ProxyResponse], Awaitable[None]]

_REQUEST_PHASES = ("rewrite", "access", "before_proxy")


def _overrides(instance: Plugin, phase: str) -> bool:
    # Only hooks a class defines itself are called (APISIX's `if phase_func`), so a no-op default
    # costs nothing per request.
    return getattr(type(instance), phase) is not getattr(Plugin, phase)


class PluginChain:
    """Plugin instances sorted by priority (higher first), with each phase's hooks pre-collected."""

    def __init__(self, entries: Iterable[tuple[PluginSpec, Plugin]]) -> None:
        ordered = sorted(entries, key=lambda entry: -entry[0].priority)
        self.specs: dict[str, PluginSpec] = {spec.plugin.name: spec for spec, _ in ordered}
        self.instances: dict[str, Plugin] = {spec.plugin.name: instance for spec, instance in ordered}
        plugins = [instance for _, instance in ordered]
        self.request_hooks: dict[str, tuple[RequestHook, ...]] = {
            phase: tuple(getattr(p, phase) for p in plugins if _overrides(p, phase)) for phase in _REQUEST_PHASES
        }
        self.header_filters: tuple[ResponseHook, ...] = tuple(
            p.header_filter for p in plugins if _overrides(p, "header_filter")
        )
        self.body_filters: tuple[ResponseHook, ...] = tuple(
            p.body_filter for p in plugins if _overrides(p, "body_filter")
        )
        self.loggers: tuple[ResponseHook, ...] = tuple(p.log for p in plugins if _overrides(p, "log"))
        self.has_request_hooks = any(self.request_hooks.values())
        self.needs_response_body = any(getattr(p, "needs_response_body", False) for p in plugins)
        self.late_rewrite_hooks: tuple[RequestHook, ...] = ()

    @classmethod
    def build(cls, specs: Iterable[PluginSpec]) -> PluginChain:
        return cls((spec, spec.plugin(spec.config)) for spec in specs)

    def __contains__(self, name: str) -> bool:
        return name in self.instances

    def __bool__(self) -> bool:
        return bool(self.instances)

    def with_overrides(
        self, specs: Mapping[str, PluginSpec], instance_for: Callable[[PluginSpec], Plugin] | None = None
    ) -> PluginChain:
        """This chain with some plugins added or replaced (a consumer's plugins over a route's).

        Instances that are not replaced are shared, so their state (counters) stays one per route;
        `instance_for` lets the caller share the new ones too (a group's plugins across its members).
        The merged chain's `late_rewrite_hooks` are the rewrite hooks of the plugins it brought in:
        they missed the rewrite phase, which ran before the consumer was known.
        """
        make = instance_for or (lambda spec: spec.plugin(spec.config))
        kept = [(spec, self.instances[name]) for name, spec in self.specs.items() if name not in specs]
        added = [(spec, make(spec)) for spec in specs.values()]
        merged = PluginChain([*kept, *added])
        fresh = PluginChain(added)
        merged.late_rewrite_hooks = fresh.request_hooks["rewrite"]
        return merged


EMPTY_CHAIN = PluginChain(())


async def run_request_phase(phase: str, chains: Sequence[PluginChain], ctx: RequestContext) -> Reply | None:
    """One request phase over global rules first, then the route's plugins; the first Reply ends it."""
    for chain in chains:
        for hook in chain.request_hooks[phase]:
            reply = await hook(ctx)
            if reply is not None:
                return reply
    return None


class ChainSource(Protocol):
    """What the request phases need of a compiled route: its chain, and its chain for a consumer."""

    chain: PluginChain

    def chain_for(
        self, consumer: Consumer | None, consumer_plugins: Mapping[str, Mapping[str, PluginSpec]]
    ) -> PluginChain: ...


async def run_request_phases(
    global_chain: PluginChain,
    route: ChainSource,
    consumer_plugins: Mapping[str, Mapping[str, PluginSpec]],
    ctx: RequestContext,
) -> Reply | None:
    """rewrite, access and before_proxy, for the HTTP edge and the native gRPC listener alike.

    Once authentication found the consumer, its name is asserted upstream and its own plugins join
    the route's; ctx.chains ends as the chains that ran, for the response and log phases.
    """
    ctx.chains = (global_chain, route.chain)
    if not (global_chain.has_request_hooks or route.chain.has_request_hooks):
        return None  # no plugin has a request hook: no phase has anything to run (nor a consumer to find)
    reply = await run_request_phase("rewrite", ctx.chains, ctx)
    if reply is None and ctx.consumer is not None:
        ctx.set_upstream_header("X-Consumer-Username", ctx.consumer.username)
        chain = route.chain_for(ctx.consumer, consumer_plugins)
        if chain is not route.chain:
            ctx.chains = (global_chain, chain)
            reply = await run_late_rewrite(chain, ctx)
    if reply is None:
        reply = await run_request_phase("access", ctx.chains, ctx)
    if reply is None:
        reply = await run_request_phase("before_proxy", ctx.chains, ctx)
    return reply


async def run_late_rewrite(chain: PluginChain, ctx: RequestContext) -> Reply | None:
    """The rewrite hooks of a consumer's own plugins, once authentication found the consumer (APISIX's
    rewrite_in_consumer)."""
    for hook in chain.late_rewrite_hooks:
        reply = await hook(ctx)
        if reply is not None:
            return reply
    return None


async def run_response_phases(chains: Sequence[PluginChain], ctx: RequestContext, response: ProxyResponse) -> None:
    for chain in chains:
        for header_filter in chain.header_filters:
            await header_filter(ctx, response)
    if any(chain.body_filters for chain in chains):
        if any(chain.needs_response_body for chain in chains):
            await response.read_body()
        for chain in chains:
            for body_filter in chain.body_filters:
                await body_filter(ctx, response)


async def run_log_phase(chains: Sequence[PluginChain], ctx: RequestContext, response: ProxyResponse) -> None:
    for chain in chains:
        for logger in chain.loggers:
            try:
                await logger(ctx, response)
            except Exception:
                log.exception("log phase of a plugin failed on route %s", ctx.route_id)
