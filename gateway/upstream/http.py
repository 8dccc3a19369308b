"""HTTP upstreams: a pooled aiohttp session per upstream and a streaming reverse proxy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import Node, Upstream
from gateway.context import RequestContext
from gateway.errors import GatewayError, to_gateway_error
from gateway.responses import ProxyResponse
from gateway.upstream.balancer import WeightedRoundRobin

log = logging.getLogger("protogate.upstream.http")

# RFC 9110 7.6.1 hop-by-hop fields, plus the legacy ones proxies still meet.
HOP_BY_HOP = frozenset(
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
    }
)
# The gateway settles 100-continue with the client itself (aiohttp's expect handler), as Envoy does.
_CLIENT_HOP_ONLY = frozenset({"expect"})
# Never removed because a Connection header names them: the route was matched on this Host.
_NOT_NOMINABLE = frozenset({"host"})
_CHUNK = 64 * 1024


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop fields and whatever the sender's Connection header lists, in place."""
    tokens = (token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(","))
    listed = {token for token in tokens if token} - _NOT_NOMINABLE
    for name in HOP_BY_HOP | listed:
        headers.popall(name, None)


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no byte of the request reached the node, so another node may safely be tried."""
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


class HttpUpstream:
    """The nodes of one HTTP upstream; must be built inside the running event loop."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        timeout = upstream.timeout
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        self._balancer = WeightedRoundRobin([(node, node.weight) for node in upstream.nodes])
        self._tries = len({(node.host, node.port) for node in upstream.nodes if node.weight > 0})

    async def close(self) -> None:
        await self.session.close()

    async def proxy(self, ctx: RequestContext) -> ProxyResponse:
        request = ctx.request
        length = request.content_length
        if not ctx.body_was_read and length is not None and length > ctx.body_limit:
            raise GatewayError.payload_too_large(ctx.body_limit)
        tried: set[tuple[str, int]] = set()
        while True:
            node = self._pick(tried)
            tried.add((node.host, node.port))
            url = URL.build(
                scheme="http", host=node.host, port=node.port, path=ctx.path, query_string=ctx.query, encoded=True
            )
            try:
                upstream_response = await self.session.request(
                    ctx.method,
                    url,
                    headers=self._upstream_headers(ctx, node),
                    data=await _request_body(ctx),
                    allow_redirects=False,
                    compress=None,
                )
                break
            except GatewayError:
                raise
            except Exception as exc:
                # Retry only to another node, and only when the request never left (APISIX's retries).
                if _is_connect_failure(exc) and len(tried) < self._tries:
                    log.warning("upstream node %s:%s failed to connect (%s); trying another", node.host, node.port, exc)
                    continue
                raise _upstream_error(exc) from exc
        headers = CIMultiDict(upstream_response.headers)
        strip_hop_by_hop(headers)

        async def release() -> None:
            upstream_response.release()

        return ProxyResponse(
            upstream_response.status, headers, stream=upstream_response.content.iter_chunked(_CHUNK), close=release
        )

    def _pick(self, tried: set[tuple[str, int]]) -> Node:
        node = self._balancer.pick()
        if (node.host, node.port) not in tried:
            return node
        return next(n for n in self.upstream.nodes if n.weight > 0 and (n.host, n.port) not in tried)

    def _upstream_headers(self, ctx: RequestContext, node: Node) -> CIMultiDict[str]:
        # ctx.headers is what the client sent (names with "_" already dropped at the edge), as the
        # plugins left it; hop-by-hop fields go before ours are added, so a client's Connection
        # header never strips them (THREATS 5).
        headers = CIMultiDict(ctx.headers)
        strip_hop_by_hop(headers)
        for name in _CLIENT_HOP_ONLY:
            headers.popall(name, None)
        request = ctx.request
        peer = request.remote or ""
        forwarded_for = [value for value in headers.popall("X-Forwarded-For", []) if value.strip()]
        headers["X-Forwarded-For"] = ", ".join([*forwarded_for, peer])
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["X-Real-IP"] = ctx.client_ip
        if self.upstream.pass_host == "node":
            headers["Host"] = node_host(node)
        return headers


def node_host(node: Node) -> str:
    """The Host a node is called by (pass_host: node): the port only when it is not http's 80."""
    host = f"[{node.host}]" if ":" in node.host else node.host
    return host if node.port == 80 else f"{host}:{node.port}"


async def _request_body(ctx: RequestContext) -> bytes | AsyncIterator[bytes] | None:
    """What a plugin read or replaced, as bytes; otherwise the client's body streamed, within the limit."""
    if ctx.body_was_read:
        return await ctx.read_body()
    # A fresh generator per try: a failed connect never started reading the client's body.
    return _limited_body(ctx.request, ctx.body_limit) if ctx.request.body_exists else None


async def _limited_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise GatewayError.payload_too_large(limit)
        yield chunk


def _upstream_error(exc: BaseException) -> GatewayError:
    cause = exc
    # aiohttp wraps exceptions raised by the body generator; surface our own refusal.
    while cause.__cause__ is not None and not isinstance(cause, GatewayError):
        cause = cause.__cause__
    return cause if isinstance(cause, GatewayError) else to_gateway_error(exc)
