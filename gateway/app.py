"""The aiohttp application: one catch-all handler in front of the compiled route table."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from gateway.config.loader import LoadedConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError, render_http, to_gateway_error
from gateway.keys import LOADED_CONFIG, RUNTIME
from gateway.paths import normalize_path, split_target
from gateway.runtime import Runtime
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


async def handle_request(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    raw_path, query = split_target(request.raw_path)
    path = normalize_path(raw_path)
    host = request.headers.get("Host", "")
    route = runtime.table.match(host, request.method, path)
    if route is None:
        allowed = runtime.table.allowed_methods(host, path)
        if allowed:
            raise GatewayError.method_not_allowed(allowed, f"{request.method} is not allowed on {path}")
        raise GatewayError.not_found(f"no route matches {request.method} {path}")
    ctx = RequestContext(request=request, route_id=route.route_id, path=path, query=query)
    return await route.target.handle(ctx)


def build_app(loaded: LoadedConfig) -> web.Application:
    settings = loaded.config.gateway
    largest_body = max(
        [settings.client_max_body_size, *(r.max_body_size or 0 for r in loaded.config.routes)], default=0
    )
    app = web.Application(middlewares=[error_middleware], client_max_size=largest_body + 1)
    app[LOADED_CONFIG] = loaded
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_route("*", "/{tail:.*}", handle_request)
    return app


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = Runtime(app[LOADED_CONFIG])
    app[RUNTIME] = runtime
    yield
    await runtime.close()
