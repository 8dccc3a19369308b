"""Header rules of the HTTP reverse proxy, without sockets (the wire is in tests/integration/test_http_proxy.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.models import Node, Upstream
from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext
from gateway.upstream.http import HttpUpstream, node_host, strip_hop_by_hop


def mocked_request(headers: list[tuple[str, str]], peer: str = "192.0.2.7") -> web.Request:
    extra = {"peername": (peer, 50000), "sockname": ("127.0.0.1", 9080), "sslcontext": None}
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    return make_mocked_request("GET", "/echo", headers=CIMultiDict(headers), transport=transport)


@pytest.fixture
async def upstream() -> AsyncIterator[HttpUpstream]:
    client = HttpUpstream(Upstream(nodes=[Node(host="10.0.0.5", port=8080)]))
    yield client
    await client.close()


def upstream_headers(client: HttpUpstream, headers: list[tuple[str, str]], **kwargs: Any) -> CIMultiDict[str]:
    request = mocked_request(headers, **kwargs)
    ctx = RequestContext(
        request=request,
        route_id="r",
        method=request.method,
        path=request.path,
        query="",
        headers=CIMultiDict(request.headers),
        client_ip=request.remote or "",
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
    )
    return client._upstream_headers(ctx, client.upstream.nodes[0])


def test_strip_hop_by_hop_removes_fixed_and_nominated_fields() -> None:
    headers = CIMultiDict(
        [
            ("Connection", "close, X-A"),
            ("Connection", "x-b"),
            ("X-A", "1"),
            ("X-B", "2"),
            ("TE", "trailers"),
            ("Keep-Alive", "5"),
            ("Upgrade", "h2c"),
            ("X-Kept", "3"),
        ]
    )
    strip_hop_by_hop(headers)
    assert list(headers.items()) == [("X-Kept", "3")]


def test_strip_hop_by_hop_never_removes_host() -> None:
    headers = CIMultiDict([("Host", "example.test"), ("Connection", "Host")])
    strip_hop_by_hop(headers)
    assert headers.getall("Host") == ["example.test"]


async def test_forwarding_headers_are_set_after_the_connection_header_is_applied(upstream: HttpUpstream) -> None:
    sent = [
        ("Host", "example.test"),
        ("Connection", "X-Forwarded-For, X-Real-IP"),
        ("X-Forwarded-For", "203.0.113.1"),
        ("X-Forwarded-For", ""),
        ("X-Real-IP", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("Expect", "100-continue"),
    ]
    headers = upstream_headers(upstream, sent)
    assert headers.getall("X-Forwarded-For") == ["192.0.2.7"]
    assert headers.getall("X-Real-IP") == ["192.0.2.7"]
    assert headers.getall("Host") == ["example.test"]
    assert "Expect" not in headers  # names with "_" are dropped earlier, at the edge (tests/gateway/test_edge.py)


async def test_forwarded_for_joins_every_line_then_the_peer(upstream: HttpUpstream) -> None:
    sent = [("Host", "h"), ("X-Forwarded-For", "203.0.113.1"), ("x-forwarded-for", "10.0.0.1, 10.0.0.2")]
    headers = upstream_headers(upstream, sent)
    assert headers.getall("X-Forwarded-For") == ["203.0.113.1, 10.0.0.1, 10.0.0.2, 192.0.2.7"]
    assert headers["X-Forwarded-Proto"] == "http" and headers["X-Forwarded-Host"] == "h"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [("10.0.0.5", 8080, "10.0.0.5:8080"), ("svc.internal", 80, "svc.internal"), ("::1", 8080, "[::1]:8080")],
)
def test_node_host(host: str, port: int, expected: str) -> None:
    assert node_host(Node(host=host, port=port)) == expected


@pytest.mark.parametrize(("idle", "force_close"), [(30.0, False), (0.0, True)])
async def test_keepalive_pool_sets_the_connector(idle: float, force_close: bool) -> None:
    upstream = Upstream(nodes=[Node(host="10.0.0.5", port=8080)], keepalive_pool={"idle_timeout": idle})
    client = HttpUpstream(upstream)
    try:
        connector = client.session.connector
        assert connector is not None and connector.force_close is force_close
        assert client.nodes.retries == 0
    finally:
        await client.close()
