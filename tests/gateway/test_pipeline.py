"""PluginChain: priority order, only overridden hooks, global rules first, Reply short-circuits."""

from __future__ import annotations

from typing import ClassVar

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext
from gateway.pipeline import PluginChain, run_log_phase, run_request_phase, run_request_phases, run_response_phases
from gateway.plugins.base import Plugin, PluginConfig, PluginSpec
from gateway.responses import ProxyResponse, Reply


class Note(PluginConfig):
    label: str = ""


def recorder(plugin_name: str, prio: int) -> type[Plugin[Note]]:
    class Recorder(Plugin[Note]):
        name: ClassVar[str] = plugin_name
        priority: ClassVar[int] = prio
        Config = Note

        async def rewrite(self, ctx: RequestContext) -> Reply | None:
            ctx.vars.setdefault("order", []).append(f"{self.name}:{self.config.label}")
            return Reply(204) if self.config.label == "stop" else None

        async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
            response.headers.add("X-Seen", self.name)

        async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
            ctx.vars.setdefault("logged", []).append(self.name)

    return Recorder


class RewriteOnly(Plugin[Note]):
    name: ClassVar[str] = "rewrite-only"
    priority: ClassVar[int] = 1
    Config = Note

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        return None


class FailingLogger(Plugin[Note]):
    name: ClassVar[str] = "failing-logger"
    priority: ClassVar[int] = 0
    Config = Note

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        raise RuntimeError("sink down")


def spec(plugin: type[Plugin], label: str = "", priority: int | None = None) -> PluginSpec:
    return PluginSpec(plugin, Note(label=label), plugin.priority if priority is None else priority)


def context() -> RequestContext:
    request = make_mocked_request("GET", "/x")
    return RequestContext(
        request=request,
        route_id="r",
        method="GET",
        path="/x",
        query="",
        headers=CIMultiDict(),
        client_ip="127.0.0.1",
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
    )


async def test_higher_priority_runs_first() -> None:
    chain = PluginChain.build([spec(recorder("low", 10)), spec(recorder("high", 100))])
    ctx = context()
    assert await run_request_phase("rewrite", [chain], ctx) is None
    assert ctx.vars["order"] == ["high:", "low:"]


async def test_meta_priority_overrides_the_class_priority() -> None:
    chain = PluginChain.build([spec(recorder("low", 10), priority=500), spec(recorder("high", 100))])
    ctx = context()
    await run_request_phase("rewrite", [chain], ctx)
    assert ctx.vars["order"] == ["low:", "high:"]


async def test_global_chain_runs_before_the_route_chain() -> None:
    global_chain = PluginChain.build([spec(recorder("global", 1))])
    route_chain = PluginChain.build([spec(recorder("route", 1000))])
    ctx = context()
    await run_request_phase("rewrite", [global_chain, route_chain], ctx)
    assert ctx.vars["order"] == ["global:", "route:"]


async def test_a_reply_stops_the_phase() -> None:
    chain = PluginChain.build([spec(recorder("first", 100), "stop"), spec(recorder("second", 10))])
    ctx = context()
    reply = await run_request_phase("rewrite", [chain], ctx)
    assert reply is not None and reply.status == 204
    assert ctx.vars["order"] == ["first:stop"]


def test_only_overridden_hooks_are_collected() -> None:
    chain = PluginChain.build([spec(RewriteOnly)])
    assert len(chain.request_hooks["rewrite"]) == 1
    assert chain.request_hooks["access"] == () and chain.header_filters == () and chain.loggers == ()


async def test_response_and_log_phases() -> None:
    chain = PluginChain.build([spec(recorder("a", 2)), spec(recorder("b", 1)), spec(FailingLogger)])
    ctx = context()
    response = ProxyResponse(200, CIMultiDict())
    await run_response_phases([chain], ctx, response)
    assert response.headers.getall("X-Seen") == ["a", "b"]
    await run_log_phase([chain], ctx, response)  # a failing logger is logged, never raised
    assert ctx.vars["logged"] == ["a", "b"]


async def test_consumer_overrides_replace_and_add_while_sharing_the_rest() -> None:
    base = PluginChain.build([spec(recorder("shared", 50)), spec(recorder("replaced", 40), "route")])
    merged = base.with_overrides(
        {"replaced": spec(recorder("replaced", 40), "consumer"), "added": spec(recorder("added", 45))}
    )
    ctx = context()
    await run_request_phase("rewrite", [merged], ctx)
    assert ctx.vars["order"] == ["shared:", "added:", "replaced:consumer"]
    assert merged.instances["shared"] is base.instances["shared"]


class _Route:
    """A compiled route as run_request_phases sees it; a consumer chain must never be asked for here."""

    def __init__(self, chain: PluginChain) -> None:
        self.chain = chain

    def chain_for(self, consumer: object, consumer_plugins: object) -> PluginChain:
        raise AssertionError("no plugin ran, so no consumer can have been found")


async def test_request_phases_without_hooks_only_record_the_chains() -> None:
    global_chain, route_chain = PluginChain.build([]), PluginChain.build([spec(FailingLogger)])
    assert not global_chain.has_request_hooks and not route_chain.has_request_hooks
    ctx = context()
    assert await run_request_phases(global_chain, _Route(route_chain), {}, ctx) is None
    assert ctx.chains == (global_chain, route_chain)  # the response and log phases still run these


async def test_request_phases_run_when_either_chain_has_a_hook() -> None:
    global_chain = PluginChain.build([spec(RewriteOnly)])
    assert global_chain.has_request_hooks
    ctx = context()
    reply = await run_request_phases(global_chain, _Route(PluginChain.build([spec(recorder("r", 1), "stop")])), {}, ctx)
    assert reply is not None and reply.status == 204 and ctx.vars["order"] == ["r:stop"]
