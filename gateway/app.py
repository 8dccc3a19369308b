"""The aiohttp application: one catch-all handler in front of the compiled route table."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway import __version__
from gateway.config.loader import LoadedConfig
from gateway.context import RequestContext
from gateway.edge import EDGE_HANDLER, edge_middleware
from gateway.errors import GatewayError, render_http, to_gateway_error
from gateway.grpc_web import as_grpc_web
from gateway.keys import CONFIG_MANAGER, CONFIG_SETTINGS, LOADED_CONFIG, RUNTIME, TELEMETRY, TLS_EDGE
from gateway.paths import normalize_path, split_target
from gateway.pipeline import run_log_phase, run_request_phases, run_response_phases
from gateway.plugins.redis_policy import close_connections as close_redis_connections
from gateway.reload import ConfigManager
from gateway.responses import ProxyResponse
from gateway.runner.pool import RUNNER_POOL
from gateway.runner.startup import runner_pool_ctx
from gateway.runtime import CompiledRoute, Runtime
from gateway.telemetry import Telemetry, phase_span, telemetry_ctx
from gateway.tls_edge import TlsEdge
from gateway.writer import send_response
from transcoder.status import code_from_http_status

log = logging.getLogger("protogate.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where a refusal becomes an HTTP answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. its parser limits) get the same JSON shape as ours.
        if exc.status < 400:
            raise
        err = GatewayError(exc.status, code_from_http_status(exc.status), exc.reason, headers=_kept_headers(exc))
        return render_http(err)
    except Exception as exc:
        return render_http(to_gateway_error(exc))


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {name: exc.headers[name] for name in ("Allow", "Retry-After") if name in exc.headers}


# Identity the gateway asserts upstream; a client's own copies are removed first (THREATS 4),
# in header form and in the Grpc-Metadata- form that would become the same gRPC metadata.
IDENTITY_HEADERS = ("X-Consumer-Username", "X-Consumer-Groups", "X-Credential-Identifier")
_FORGEABLE = tuple(name for header in IDENTITY_HEADERS for name in (header, f"Grpc-Metadata-{header}"))
SERVER_HEADER = f"protogate/{__version__}"


async def handle_request(request: web.Request) -> web.StreamResponse:
    app = request.app
    # Read per request: a reload swaps it. The request holds its runtime open until its answer is sent.
    runtime = app[CONFIG_MANAGER].runtime
    runtime.enter()
    try:
        return await _handle_request(request, runtime, app[TELEMETRY], app.get(TLS_EDGE))
    finally:
        runtime.leave()


async def _handle_request(
    request: web.Request, runtime: Runtime, telemetry: Telemetry, tls_edge: TlsEdge | None
) -> web.StreamResponse:
    ctx: RequestContext | None = None
    try:
        route, ctx = _route_request(runtime, request, tls_edge)
        telemetry.begin(ctx, (runtime.global_chain, route.chain))
        response = await _proxy(runtime, route, ctx)
    except Exception as exc:
        response = ProxyResponse.from_error(to_gateway_error(exc))
    if ctx is not None:
        try:
            with phase_span(ctx, "response plugins"):
                if any(chain.header_filters or chain.body_filters for chain in ctx.chains):
                    await run_response_phases(ctx.chains, ctx, response)
        except Exception as exc:  # a response phase that fails still owes the client an answer
            if response.close is not None:  # release the upstream (a streamed call may have no deadline)
                await response.close()
            response = ProxyResponse.from_error(to_gateway_error(exc))
        ctx.response = response
    # A gRPC-Web client reads refusals (a plugin's, the router's) as gRPC statuses, not JSON.
    response = as_grpc_web(request.headers.get("Content-Type"), response)
    response.headers["Server"] = SERVER_HEADER
    if tls_edge is not None and tls_edge.hsts is not None and request.secure:
        response.headers.setdefault("Strict-Transport-Security", tls_edge.hsts)
    try:
        return await send_response(request, response)
    finally:
        # After the client has the answer (or went away): every request is logged, stopped ones too.
        telemetry.finish(request, ctx, response)
        if ctx is not None and any(chain.loggers for chain in ctx.chains):
            await run_log_phase(ctx.chains, ctx, response)


def _route_request(
    runtime: Runtime, request: web.Request, tls_edge: TlsEdge | None
) -> tuple[CompiledRoute, RequestContext]:
    raw_path, query = split_target(request.raw_path)
    path = normalize_path(raw_path)
    client_cert = None
    if tls_edge is not None:  # an mTLS host refuses a request without its client certificate, on any route
        client_cert, refusal = tls_edge.check_request(request, path)
        if refusal is not None:
            raise refusal
    host = request.headers.get("Host", "")
    route = runtime.table.match(host, request.method, path)
    if route is None:
        allowed = runtime.table.allowed_methods(host, path)
        if allowed:
            raise GatewayError.method_not_allowed(allowed, f"{request.method} is not allowed on {path}")
        raise GatewayError.not_found(f"no route matches {request.method} {path}")
    headers = CIMultiDict(request.headers)
    for name in _FORGEABLE:
        headers.popall(name, None)
    ctx = RequestContext(
        request=request,
        route_id=route.route_id,
        service_id=route.service_id,
        method=request.method,
        path=path,
        query=query,
        headers=headers,
        client_ip=request.remote or "",
        consumers=runtime.consumers,
        body_limit=route.body_limit,
        client_cert=client_cert,
    )
    return route, ctx


async def _proxy(runtime: Runtime, route: CompiledRoute, ctx: RequestContext) -> ProxyResponse:
    """The request phases, then the upstream."""
    reply = await run_request_phases(runtime.global_chain, route, runtime.consumer_plugins, ctx)
    if reply is not None:
        response = reply.to_response()
        response.source = "plugin"
        return response
    return await route.target.handle(ctx)


def build_app(loaded: LoadedConfig, document_settings: dict[str, Any] | None = None) -> web.Application:
    settings = loaded.config.gateway
    largest_body = max(
        [settings.client_max_body_size, *(r.max_body_size or 0 for r in loaded.config.routes)], default=0
    )
    app = web.Application(middlewares=[error_middleware, edge_middleware], client_max_size=largest_body + 1)
    app[LOADED_CONFIG] = loaded
    if document_settings is not None:  # the config file's own sections, as written: reloads keep them
        app[CONFIG_SETTINGS] = document_settings
    app.cleanup_ctx.append(telemetry_ctx)  # before the runtime: started first, closed last
    app.cleanup_ctx.append(runner_pool_ctx)  # plugin runners up and their configs accepted before the runtime
    app.cleanup_ctx.append(_runtime_ctx)
    route = app.router.add_route("*", "/{tail:.*}", _catch_all)
    app[EDGE_HANDLER] = _resolved_handler(app, route)
    return app


def _resolved_handler(app: web.Application, route: web.AbstractRoute) -> Handler:
    """What aiohttp's app._handle does for each request, with the app's one route resolved once, not per request.

    The real listeners (EdgeRunner) call this; aiohttp's test client goes through app._handle, which ends in the
    same middlewares and handler.
    """
    match_info = web.UrlMappingMatchInfo({}, route)
    match_info.add_app(app)
    match_info.freeze()
    routed = functools.partial(error_middleware, handler=functools.partial(edge_middleware, handler=_catch_all))

    async def handle(request: web.Request) -> web.StreamResponse:
        request._match_info = match_info  # what request.app reads (as does aiohttp's response-prepare hook)
        if request.headers.get(hdrs.EXPECT):  # 100-continue, as app._handle settles it before the middlewares
            answer = await route.handle_expect_header(request)
            await request.writer.drain()
            if answer is not None:
                return answer
        return await routed(request)

    return handle


async def _catch_all(request: web.Request) -> web.StreamResponse:
    # aiohttp's own 404 for what "/{tail:.*}" does not match: a target without a leading "/" (`OPTIONS *`), or a
    # path whose %0A decodes to a newline (the route's regex stops there); so both kinds of listener answer alike.
    path = request.rel_url.path_safe
    if path[:1] != "/" or "\n" in path:
        raise web.HTTPNotFound()
    return await handle_request(request)


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = Runtime(app[LOADED_CONFIG])
    app[RUNTIME] = runtime
    manager = ConfigManager(
        app[LOADED_CONFIG], runtime, settings=app.get(CONFIG_SETTINGS), runner_pool=lambda: app.get(RUNNER_POOL)
    )
    app[CONFIG_MANAGER] = manager
    yield
    await manager.close()  # the current runtime, and replaced ones still draining
    await close_redis_connections()  # shared by every runtime's limiters, so closed once, last
