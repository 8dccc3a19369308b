"""HTTP upstreams: a pooled aiohttp session per upstream and a streaming reverse proxy."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import Node, Timeout, Upstream
from gateway.context import RequestContext
from gateway.errors import GatewayError, to_gateway_error
from gateway.responses import ProxyResponse
from gateway.telemetry import start_upstream_call, trace_headers
from gateway.tls import ClientTls, client_tls_of
from gateway.upstream.node_state import NodeSet

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
_NO_BODY_STATUSES = frozenset({204, 304})  # and 1xx, which never reach here


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop fields and whatever the sender's Connection header lists, in place."""
    tokens = (token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(","))
    listed = {token for token in tokens if token} - _NOT_NOMINABLE
    for name in HOP_BY_HOP | listed:
        headers.popall(name, None)


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no byte of the request reached the node, so another node may safely be tried."""
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


# RFC 9110 9.2.2; an answer with one of RETRY_STATUSES may be retried only for these (or when configured).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})


# Bodies up to this size with a known length are read before a request that may be retried.
RETRY_BUFFER = 1024 * 1024


def _small_body(request: web.Request) -> bool:
    length = request.content_length
    return request.body_exists and length is not None and length <= RETRY_BUFFER


def _client_timeout(timeout: Timeout) -> aiohttp.ClientTimeout:
    # aiohttp has no send timeout: `send` is taken for APISIX compatibility and not enforced.
    return aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read)


class HttpUpstream:
    """The nodes of one HTTP upstream; must be built inside the running event loop."""

    def __init__(self, upstream: Upstream, *, base_dir: Path = Path()) -> None:
        self.upstream = upstream
        pool = upstream.keepalive_pool
        self._timeout = _client_timeout(upstream.timeout)
        self._scheme = "https" if upstream.scheme == "https" else "http"
        self._server_name: str | None = None
        ssl_context: ssl.SSLContext | bool = True
        tls: ClientTls | None = None
        if upstream.scheme == "https":
            # Read and checked at load already; read again here so a reload picks up renewed files.
            tls = client_tls_of(upstream.tls, base_dir)
            ssl_context = tls.ssl_context()
            self._server_name = tls.server_name
            if not tls.verify:
                log.warning("upstream %s: TLS certificates are NOT verified (tls.verify: false)", _name(upstream))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=ssl_context,
                limit=0,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
                keepalive_timeout=pool.idle_timeout if pool.idle_timeout > 0 else None,
                force_close=pool.idle_timeout == 0,
            ),
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        self.nodes = NodeSet(upstream, tls=tls)  # https probes trust and present what calls do

    @property
    def node_set(self) -> NodeSet:
        """The nodes' health and load, by the name GrpcUpstream gives them (status pages read either)."""
        return self.nodes

    async def close(self) -> None:
        await self.nodes.close()
        await self.session.close()

    async def proxy(self, ctx: RequestContext, timeout: Timeout | None = None) -> ProxyResponse:
        """Calls a node and hands back its answer with the body still streaming.

        A failed attempt goes to another node (up to `retries` more, within `retry_timeout`) when that
        is safe: a connect failure always (nothing was sent); a dropped connection or a 502/503/504
        only when the body is in memory and the method is idempotent (or `retry_non_idempotent`).
        Such a request's body, when it has a length of at most RETRY_BUFFER, is read first to that end;
        a larger or chunked one streams through and is not retried after it was sent.
        The last attempt's answer or error is what the client gets.
        """
        request = ctx.request
        length = request.content_length
        if not ctx.body_was_read and length is not None and length > ctx.body_limit:
            raise GatewayError.payload_too_large(ctx.body_limit)
        nodes = self.nodes
        upstream = self.upstream
        client_timeout = self._timeout if timeout is None else _client_timeout(timeout)
        repeatable = ctx.method in IDEMPOTENT_METHODS or upstream.retry_non_idempotent
        if repeatable and nodes.retries and not ctx.body_was_read and _small_body(request):
            await ctx.read_body()  # kept, so that another node can be sent it too (nginx buffers bodies)
        replayable = ctx.body_was_read or not request.body_exists
        may_repeat = replayable and repeatable
        tried: list[int] = []
        first_try = time.monotonic()
        while True:
            state = nodes.pick(ctx, tried)
            tried.append(state.index)
            node = state.node
            retry_left = len(tried) <= nodes.retries and (
                upstream.retry_timeout <= 0 or time.monotonic() - first_try < upstream.retry_timeout
            )
            url = URL.build(
                scheme=self._scheme, host=node.host, port=node.port, path=ctx.path, query_string=ctx.query, encoded=True
            )
            started = nodes.acquire(state)
            upstream_call = start_upstream_call(ctx, "http", str(url), state.address)
            try:
                upstream_response = await self.session.request(
                    ctx.method,
                    url,
                    headers=self._upstream_headers(ctx, node),
                    data=await _request_body(ctx),
                    allow_redirects=False,
                    compress=None,
                    timeout=client_timeout,
                    server_hostname=self._server_name,
                )
            except GatewayError:
                nodes.release(state, started, ok=True)  # the client's body was refused, not the node
                raise
            except Exception as exc:
                upstream_call.failed(exc)
                refusal = _own_refusal(exc)
                if refusal is not None:  # raised by the body generator (413): the client's fault
                    nodes.release(state, started, ok=True)
                    raise refusal from exc
                nodes.release(state, started, ok=False)
                timed_out = isinstance(exc, TimeoutError)
                nodes.report_failure(state, "timeout" if timed_out else "tcp")
                # Retry only to another node, and only when that cannot repeat the request's effect.
                safe = _is_connect_failure(exc) or (
                    may_repeat and isinstance(exc, aiohttp.ClientConnectionError) and not timed_out
                )
                if safe and retry_left:
                    log.warning("upstream node %s failed (%s); trying another", state.address, exc)
                    continue
                raise _upstream_error(exc) from exc
            status = upstream_response.status
            upstream_call.http_status(status)
            nodes.report_status(state, status)
            if status in RETRY_STATUSES and may_repeat and retry_left:
                upstream_response.release()
                nodes.release(state, started, ok=False)
                log.warning("upstream node %s answered %d; trying another", state.address, status)
                continue
            break
        headers = CIMultiDict(upstream_response.headers)
        strip_hop_by_hop(headers)
        if _arrived_whole(ctx.method, upstream_response):
            # A small answer came whole with its head: the client gets it in one write (head and body) rather
            # than streamed, and the connection goes back to the pool at once. Same bytes, same Content-Length.
            body = upstream_response.content.read_nowait()  # not read(): it would wait for a request body still going
            upstream_response.release()
            nodes.release(state, started, ok=status < 500)
            return ProxyResponse(status, headers, body)
        released = False

        async def release() -> None:
            nonlocal released
            upstream_response.release()
            if not released:
                released = True
                nodes.release(state, started, ok=status < 500)

        return ProxyResponse(
            upstream_response.status, headers, stream=upstream_response.content.iter_chunked(_CHUNK), close=release
        )

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
        trace_headers(ctx, headers)  # the gateway's trace context replaces the client's, when traced
        return headers


def _arrived_whole(method: str, response: aiohttp.ClientResponse) -> bool:
    """The answer's body is all in memory already and framed by a Content-Length (a HEAD's or a 204's is not)."""
    return (
        response.content.is_eof()  # the parser saw the whole body (a cut one sets an error, never EOF)
        and method != "HEAD"
        and response.status not in _NO_BODY_STATUSES
        and "Content-Length" in response.headers
    )


def _name(upstream: Upstream) -> str:
    return upstream.id or upstream.name or "(inline)"


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


def _own_refusal(exc: BaseException) -> GatewayError | None:
    cause: BaseException | None = exc
    # aiohttp wraps exceptions raised by the body generator; surface our own refusal.
    while cause is not None and not isinstance(cause, GatewayError):
        cause = cause.__cause__
    return cause


def _upstream_error(exc: BaseException) -> GatewayError:
    refusal = _own_refusal(exc)
    return refusal if refusal is not None else to_gateway_error(exc)
