"""A small answer that arrives whole with its head is passed on buffered; anything else still streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from unittest import mock

import pytest
from aiohttp.test_utils import TestServer, make_mocked_request
from multidict import CIMultiDict
from servers.http_upstream import build_app, pattern

from gateway.config.models import Node, Upstream
from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext
from gateway.responses import ProxyResponse
from gateway.upstream.http import HttpUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[HttpUpstream]:
    async with TestServer(build_app("a")) as server:
        client = HttpUpstream(Upstream(nodes=[Node(host="127.0.0.1", port=server.port)]))
        try:
            yield client
        finally:
            await client.close()


async def proxy(client: HttpUpstream, target: str, method: str = "GET") -> ProxyResponse:
    extra = {"peername": ("192.0.2.7", 50000), "sockname": ("127.0.0.1", 9080), "sslcontext": None}
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    request = make_mocked_request(method, target, headers=CIMultiDict({"Host": "gw"}), transport=transport)
    path, _, query = target.partition("?")
    ctx = RequestContext(
        request=request,
        route_id="r",
        method=method,
        path=path,
        query=query,
        headers=CIMultiDict(request.headers),
        client_ip="192.0.2.7",
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
    )
    return await client.proxy(ctx)


async def test_small_answer_is_passed_on_buffered_and_releases_the_node(upstream: HttpUpstream) -> None:
    response = await proxy(upstream, "/echo")
    assert response.stream is None and response.close is None
    assert response.headers["Content-Length"] == str(len(response.body))
    assert b'"path":"/echo"' in response.body.replace(b" ", b"")
    assert upstream.nodes.states[0].active == 0  # back in the pool before the client has the answer


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("HEAD", "/echo"),  # a Content-Length and no body: the length must reach the client as it is
        ("GET", "/status/204"),
        ("GET", "/stream"),  # chunked: no Content-Length to keep
        ("GET", "/big?bytes=1048576"),  # still arriving when the head is read
        ("GET", "/slow-body?stall=0.2"),
    ],
)
async def test_other_answers_still_stream(upstream: HttpUpstream, method: str, target: str) -> None:
    response = await proxy(upstream, target, method)
    try:
        assert response.stream is not None and response.close is not None
        assert upstream.nodes.states[0].active == 1  # held until the body was passed on
        if method == "HEAD":
            assert int(response.headers["Content-Length"]) > 0
    finally:
        await response.read_body()
    assert upstream.nodes.states[0].active == 0
    if target.startswith("/big"):
        assert response.body == pattern(1048576)
