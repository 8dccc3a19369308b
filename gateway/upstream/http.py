"""HTTP upstreams: a pooled aiohttp session per upstream and a streaming reverse proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import Node, Upstream
from gateway.errors import GatewayError, to_gateway_error
from gateway.upstream.balancer import WeightedRoundRobin

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
_CHUNK = 64 * 1024


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop fields and whatever the sender's Connection header lists, in place."""
    tokens = (token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(","))
    listed = {token for token in tokens if token}
    for name in HOP_BY_HOP | listed:
        headers.popall(name, None)


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

    async def close(self) -> None:
        await self.session.close()

    async def proxy(self, request: web.Request, path: str, query: str, body_limit: int) -> web.StreamResponse:
        node = self._balancer.pick()
        url = URL.build(scheme="http", host=node.host, port=node.port, path=path, query_string=query, encoded=True)
        headers = self._upstream_headers(request, node)
        length = request.content_length
        if length is not None and length > body_limit:
            raise GatewayError.payload_too_large(body_limit)
        body = _limited_body(request, body_limit) if request.body_exists else None
        try:
            upstream_response = await self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except GatewayError:
            raise
        except Exception as exc:
            raise _upstream_error(exc) from exc
        async with upstream_response:
            return await self._relay(request, upstream_response)

    def _upstream_headers(self, request: web.Request, node: Node) -> CIMultiDict[str]:
        headers = CIMultiDict(request.headers)
        strip_hop_by_hop(headers)  # before adding ours: a client's Connection header never strips them
        peer = request.remote or ""
        forwarded_for = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["X-Real-IP"] = peer
        if self.upstream.pass_host == "node":
            headers["Host"] = f"{node.host}:{node.port}"
        return headers

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = CIMultiDict(upstream.headers)
        strip_hop_by_hop(headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        # Once the status line is out, a failure can only cut the connection: no retry, no error body.
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


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
