"""RequestContext <-> runner messages: what an HTTPReqCall/HTTPRespCall carries, and applying the answers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.paths import normalize_path
from gateway.plugins.variables import resolve_var
from gateway.responses import ProxyResponse, Reply
from gateway.telemetry import inject_context
from plugin_runner.client import PreparedConf
from plugin_runner.proto import runner_pb2 as pb

if TYPE_CHECKING:
    from gateway.context import RequestContext

REQUEST_ID_VAR = "_ext_plugin_request_id"
# A runner may not touch these: the gateway owns framing (THREATS 5); it sets content-length itself.
# (gateway.upstream.http.HOP_BY_HOP plus content-length; not imported: that module imports the config package.)
PROTECTED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_BODY_HEADERS = ("Content-Length", "Content-MD5", "ETag")


class BadAnswer(ValueError):
    """A runner's answer the gateway cannot apply (a status out of range, a path that is not one)."""


def request_id(ctx: RequestContext) -> str:
    """One id per request for every runner call it makes: the client's X-Request-Id, else a new one."""
    rid = ctx.vars.get(REQUEST_ID_VAR)
    if rid is None:
        # 128 random bits in hex, as uuid4().hex but without building a UUID.
        rid = ctx.vars[REQUEST_ID_VAR] = ctx.headers.get("X-Request-Id") or os.urandom(16).hex()
    return rid


def _add_headers(out: Any, headers: Iterable[tuple[str, str]]) -> None:
    add = out.add  # built in place: a standalone pb.Header would be copied in
    for name, value in headers:
        if not value.isascii():
            try:
                value.encode("utf-8")  # a value aiohttp could not decode carries surrogates: never forwarded
            except UnicodeEncodeError:
                continue
        add(name=name.lower(), value=value)


def _set_trace(trace: pb.TraceContext, ctx: RequestContext) -> None:
    """The gateway's span when the request is traced (call inside plugin_runner_span), else the client's."""
    carrier: dict[str, str] = {}
    inject_context(carrier, ctx)
    if not carrier:
        carrier = {key: ctx.headers.get(key, "") for key in ("traceparent", "tracestate")}
    trace.traceparent = carrier.get("traceparent", "")
    trace.tracestate = carrier.get("tracestate", "")


def trace_context(ctx: RequestContext) -> pb.TraceContext:
    """The trace context a call carries (see _set_trace)."""
    trace = pb.TraceContext()
    _set_trace(trace, ctx)
    return trace


def _vars(ctx: RequestContext, names: Iterable[str], response: ProxyResponse | None = None) -> dict[str, str]:
    out = {}
    for name in names:
        value = resolve_var(name, ctx, response)
        if value is not None:
            out[name] = value
    return out


def _peer_port(ctx: RequestContext) -> int:
    transport = getattr(ctx.request, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else 0


async def build_request_call(ctx: RequestContext, prepared: PreparedConf) -> pb.HTTPReqCallRequest:
    message = pb.HTTPReqCallRequest(
        request_id=request_id(ctx),
        method=ctx.method,
        path=ctx.path,
        client_ip=ctx.client_ip,
        client_port=_peer_port(ctx),
        route_id=ctx.route_id,
        consumer_name=ctx.consumer.username if ctx.consumer is not None else "",
        scheme=getattr(ctx.request, "scheme", "http"),
    )
    if ctx.query:
        add = message.args.add
        for name, value in parse_qsl(ctx.query, keep_blank_values=True):
            add(name=name, value=value)
    _add_headers(message.headers, ctx.headers.items())
    _set_trace(message.trace, ctx)
    if prepared.vars:
        message.vars.update(_vars(ctx, prepared.vars))
    if prepared.needs_request_body:
        message.body = await ctx.read_body()
    return message


def build_response_call(ctx: RequestContext, response: ProxyResponse, prepared: PreparedConf) -> pb.HTTPRespCallRequest:
    """The body, when the chain needs it, is added by the caller once it is buffered."""
    message = pb.HTTPRespCallRequest(
        request_id=request_id(ctx),
        status=response.status,
        method=ctx.method,
        path=ctx.path,
        route_id=ctx.route_id,
        consumer_name=ctx.consumer.username if ctx.consumer is not None else "",
    )
    _add_headers(message.headers, response.headers.items())
    _set_trace(message.trace, ctx)
    if prepared.vars:
        message.vars.update(_vars(ctx, prepared.vars, response))
    return message


# -- answers ------------------------------------------------------------------------------------------------------


def stop_reply(stop: pb.Stop) -> Reply:
    status = stop.status or 503
    if not 100 <= status <= 599:
        raise BadAnswer(f"stop status {status} is not an HTTP status")
    headers: CIMultiDict[str] = CIMultiDict()
    for header in stop.headers:
        if header.name.lower() not in PROTECTED_HEADERS:
            headers.add(header.name, header.value)
    return Reply(status, stop.body, headers)


def apply_rewrite(ctx: RequestContext, rewrite: pb.Rewrite) -> None:
    if rewrite.HasField("path"):
        path = rewrite.path
        if not path.startswith("/") or "?" in path or "#" in path:
            raise BadAnswer(f"rewritten path must start with '/' and carry no query: {path[:100]!r}")
        try:
            ctx.path = normalize_path(path)  # stays percent-encoded; dot segments cannot escape the root
        except GatewayError as exc:
            raise BadAnswer(f"rewritten path refused: {exc.message}") from None
    if rewrite.HasField("headers"):
        apply_header_mutation(ctx.headers, rewrite.headers)
    if rewrite.HasField("args"):
        ctx.query = _mutate_query(ctx.query, rewrite.args)
    if rewrite.HasField("body"):
        ctx.set_body(rewrite.body)
        ctx.headers.popall("Transfer-Encoding", None)
        ctx.headers["Content-Length"] = str(len(rewrite.body))


def apply_header_mutation(headers: CIMultiDict[str], mutation: pb.HeaderMutation) -> None:
    """remove, then set (every value of a name replaced), then add; framing headers are left alone."""
    for name in mutation.remove:
        if name.lower() not in PROTECTED_HEADERS:
            headers.popall(name, None)
    replaced: set[str] = set()
    for header in mutation.set:
        name = header.name.lower()
        if name in PROTECTED_HEADERS:
            continue
        if name not in replaced:
            headers.popall(name, None)
            replaced.add(name)
        headers.add(header.name, header.value)
    for header in mutation.add:
        if header.name.lower() not in PROTECTED_HEADERS:
            headers.add(header.name, header.value)


def _mutate_query(query: str, mutation: pb.ArgMutation) -> str:
    if not mutation.set and not mutation.remove:
        return query
    args = parse_qsl(query, keep_blank_values=True) if query else []
    removed = set(mutation.remove)
    args = [(k, v) for k, v in args if k not in removed]
    new: dict[str, list[str]] = {}
    for arg in mutation.set:
        new.setdefault(arg.name, []).append(arg.value)
    for name, values in new.items():
        out: list[tuple[str, str]] = []
        placed = False
        for key, value in args:
            if key != name:
                out.append((key, value))
            elif not placed:
                out.extend((name, v) for v in values)
                placed = True
        if not placed:
            out.extend((name, v) for v in values)
        args = out
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in args)


async def apply_response_changes(response: ProxyResponse, changes: pb.HTTPRespCallResponse) -> None:
    if changes.status:
        if not 100 <= changes.status <= 599:
            raise BadAnswer(f"response status {changes.status} is not an HTTP status")
        response.status = changes.status
    if changes.HasField("headers"):
        apply_header_mutation(response.headers, changes.headers)
    if changes.HasField("body"):
        await drop_stream(response)
        response.body = changes.body
        for name in _BODY_HEADERS:
            response.headers.popall(name, None)


async def drop_stream(response: ProxyResponse) -> None:
    """Release an upstream body that will not be sent (replaced, or the answer became an error)."""
    if response.stream is not None:
        response.stream = None
        if response.close is not None:
            await response.close()
            response.close = None
