"""The native gRPC listener: every call proxied unchanged to its route's gRPC upstream, plugins run on metadata."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from multidict import CIMultiDict

from gateway.app import IDENTITY_HEADERS
from gateway.context import RequestContext
from gateway.errors import GatewayError, to_gateway_error
from gateway.grpc_context import (
    GRPC_METHOD,
    call_context,
    call_view,
    metadata_headers,
    passed_metadata,
    unavailable_details,
    upstream_metadata,
)
from gateway.pipeline import run_log_phase, run_request_phases
from gateway.responses import ProxyResponse, Reply
from gateway.runtime import CompiledRoute, Runtime
from gateway.telemetry import Telemetry, start_upstream_call, trace_metadata
from gateway.tls_grpc import GrpcTls
from gateway.upstream.grpc import GrpcUpstream
from transcoder.status import Code, code_from_http_status, http_status_from_code

log = logging.getLogger("protogate.grpc_proxy")

_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
_KEY = re.compile(r"[0-9a-z.\-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A second process must not silently share the port (gRPC's default allows it).
    ("grpc.so_reuseport", 0),
)


def status_code(code: int) -> grpc.StatusCode:
    return _STATUS_BY_CODE.get(int(code), grpc.StatusCode.UNKNOWN)


def render_grpc(err: GatewayError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """A refusal as a gRPC answer: the code that says why, the message, its headers as trailing metadata.

    `Retry-After` and a limiter's `X-RateLimit-*` go to the client as `retry-after`, `x-ratelimit-*`.
    """
    trailing = tuple(
        (name.lower(), value)
        for name, value in err.headers.items()
        if _KEY.fullmatch(name.lower()) and _PRINTABLE.fullmatch(value) and name.lower() != "content-type"
    )
    return status_code(err.code), err.message, trailing


def reply_error(reply: Reply) -> GatewayError:
    """A plugin's Reply to a gRPC call: only a refusal (4xx, 5xx) has a gRPC meaning."""
    if reply.status < 400:
        return GatewayError(502, Code.UNKNOWN, f"a plugin answered with HTTP {reply.status}, which gRPC cannot carry")
    body = reply.body
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            body = json.loads(text)
        except ValueError:
            body = text.strip()
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("error_msg") or "")
    else:
        message = body if isinstance(body, str) else ""
    return GatewayError(reply.status, code_from_http_status(reply.status), message[:1024] or f"HTTP {reply.status}")


def upstream_of(route: CompiledRoute) -> GrpcUpstream | None:
    """The gRPC upstream behind a route's target (gRPC-Web, transcoding, or both), if it has one."""
    upstream = getattr(route.target, "upstream", None)
    return upstream if isinstance(upstream, GrpcUpstream) else None


class GrpcProxyServer:
    """A grpc.aio server whose one generic handler proxies every method through the current runtime.

    `runtime` is read per call, so a reloaded config applies to the next call; calls in flight finish
    on the runtime they started with.
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        host: str,
        port: int,
        tls: GrpcTls | None = None,
        telemetry: Telemetry | None = None,
        app: Any = None,
    ) -> None:
        self._runtime = runtime
        self.host = host
        self.port = port
        self.tls = tls  # None: h2c
        self._telemetry = telemetry  # the HTTP edge's: one access log, one set of metrics, one tracer
        self._app = app  # the HTTP edge's aiohttp app: ext plugins find the plugin runners there
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; OSError if the address cannot be bound. `port` is the bound port afterwards."""
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((_ProxyHandler(self),))
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.tls is None:
                bound = server.add_insecure_port(target)
            else:
                bound = server.add_secure_port(target, self.tls.credentials())
        except (RuntimeError, ValueError) as exc:
            raise OSError(f"cannot listen on {target}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {target}")
        self.port = bound
        await server.start()
        self._server = server

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def proxy(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        runtime = self._runtime()
        with runtime.in_use():  # a reload closes the runtime this call started on only after it ended
            await self._proxy(runtime, method, requests, context)

    async def _proxy(
        self, runtime: Runtime, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        ctx: RequestContext | None = None
        outcome = Code.UNKNOWN
        source = "gateway"
        telemetry = self._telemetry
        try:
            route, upstream, ctx = self._admit(runtime, method, context)
            if telemetry is not None:
                telemetry.begin(ctx, (runtime.global_chain, route.chain), rpc=True)
            reply = await run_request_phases(runtime.global_chain, route, runtime.consumer_plugins, ctx)
            if reply is not None:
                source = "plugin"
                raise reply_error(reply)
            outcome = await _forward(upstream, method, requests, context, ctx)
            source = "upstream"
        except asyncio.CancelledError:
            outcome = Code.CANCELLED  # the client cancelled, or its deadline passed
            raise
        except Exception as exc:
            err = to_gateway_error(exc)
            code, message, trailing = render_grpc(err)
            outcome = Code(code.value[0])
            context.set_trailing_metadata(trailing)
            context.set_code(code)
            context.set_details(message)
        finally:
            headers: CIMultiDict[str] = CIMultiDict({"grpc-status": str(int(outcome))})
            response = ProxyResponse(http_status_from_code(outcome), headers, source=source)
            if ctx is not None:
                ctx.response = response
            if telemetry is not None:  # every call is counted and logged, unrouted and refused ones too
                request = ctx.request if ctx is not None else self._unrouted_view(method, context)
                telemetry.finish(request, ctx, response)  # type: ignore[arg-type]
            if ctx is not None:
                await run_log_phase(ctx.chains, ctx, response)

    def _unrouted_view(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        headers = metadata_headers(context.invocation_metadata() or (), IDENTITY_HEADERS)
        return call_view(method, headers, context.peer(), "", secure=self.tls is not None)

    def _admit(
        self, runtime: Runtime, method: str, context: grpc.aio.ServicerContext
    ) -> tuple[CompiledRoute, GrpcUpstream, RequestContext]:
        # An mTLS host refuses a call without its client certificate, on any route (as the HTTPS edge).
        client_cert = self.tls.check_call(context.auth_context()) if self.tls is not None else None
        if not GRPC_METHOD.fullmatch(method):
            raise GatewayError(404, Code.UNIMPLEMENTED, "not a gRPC method path")
        # grpcio does not expose :authority to Python servers yet (grpc/grpc#38906): hosts match when it does.
        authority_of = getattr(context, "experimental_authority", None)
        authority = (authority_of() or "") if callable(authority_of) else ""
        route = runtime.table.match(authority, "POST", method)
        if route is None:
            raise GatewayError(404, Code.UNIMPLEMENTED, f"no route for {method}")
        upstream = upstream_of(route)
        if upstream is None:
            raise GatewayError(404, Code.UNIMPLEMENTED, f"the route of {method} has no gRPC upstream")
        ctx = call_context(
            route_id=route.route_id,
            service_id=route.service_id,
            grpc_method=method,
            metadata=context.invocation_metadata() or (),
            peer=context.peer(),
            authority=authority,
            consumers=runtime.consumers,
            drop=IDENTITY_HEADERS,  # the gateway asserts identity; a client's own copy never counts (THREATS 4)
            secure=self.tls is not None,
            app=self._app,
        )
        ctx.client_cert = client_cert
        return route, upstream, ctx


async def _forward(
    upstream: GrpcUpstream,
    method: str,
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    ctx: RequestContext,
) -> Code:
    """One stream-stream call upstream, relayed message by message; returns the upstream's status code."""
    # The client's deadline goes upstream; a call without one gets the upstream's read timeout.
    remaining = context.time_remaining()
    timeout = remaining if remaining is not None else upstream.read_timeout
    node = upstream.pick(ctx)
    upstream_call = start_upstream_call(ctx, "grpc", method, node.address)
    # After the client span started: the trace context sent upstream names it.
    metadata = trace_metadata(ctx, upstream_metadata(ctx.headers, ctx.upstream_metadata, ctx.client_ip))
    # Not registered on the channel: method names come from clients, and the registry would only grow.
    call = node.channel.stream_stream(method)(requests, timeout=timeout, metadata=metadata)
    code = grpc.StatusCode.CANCELLED  # unless the call ends: the client went away first
    try:
        try:
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(passed_metadata(initial))
            # One message in flight at a time: each write waits for the client, each read for the upstream.
            while (message := await call.read()) is not grpc.aio.EOF:
                await context.write(message)
        except grpc.aio.AioRpcError:
            pass  # the status is read from the call below
        code = await call.code()
        details = await call.details() or ""
        trailing = await call.trailing_metadata()
    finally:
        if not call.done():
            call.cancel()  # the client went away or its deadline passed: the upstream stops too
        upstream_call.grpc_status(code)
    context.set_trailing_metadata(passed_metadata(trailing))
    if code != grpc.StatusCode.OK:
        context.set_code(code)
        context.set_details(unavailable_details(code, details, node.address))
    return Code(code.value[0])


class _ProxyHandler(grpc.GenericRpcHandler):
    """Every method, any shape, as a stream-stream call of raw bytes (no deserializers)."""

    def __init__(self, server: GrpcProxyServer) -> None:
        self._server = server

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]

        async def behavior(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await self._server.proxy(method, requests, context)

        return grpc.stream_stream_rpc_method_handler(behavior)
