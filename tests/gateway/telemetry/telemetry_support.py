"""Helpers for the telemetry tests: a hand-built RequestContext over a mocked request, and an answer."""

from __future__ import annotations

from unittest import mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext
from gateway.responses import ProxyResponse


def make_ctx(
    target: str = "/echo", *, method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> RequestContext:
    transport = mock.Mock()
    extra = {"peername": ("192.0.2.7", 50000), "sockname": ("127.0.0.1", 9080)}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    raw = CIMultiDict(headers or [])
    request = make_mocked_request(method, target, headers=raw, transport=transport)
    path, _, query = target.partition("?")
    return RequestContext(
        request=request,
        route_id="r",
        method=method,
        path=path,
        query=query,
        headers=CIMultiDict(raw),
        client_ip="192.0.2.7",
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
    )


def answer(status: int = 200, body: bytes = b"", source: str = "upstream", **headers: str) -> ProxyResponse:
    return ProxyResponse(status, CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items()), body, source=source)
