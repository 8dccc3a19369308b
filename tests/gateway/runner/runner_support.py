"""A hand-built RequestContext for the runner glue tests, optionally inside an app (where the runner pool lives)."""

from __future__ import annotations

from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext


def make_ctx(
    target: str = "/echo",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    app: web.Application | None = None,
) -> RequestContext:
    transport = mock.Mock()
    extra = {"peername": ("192.0.2.7", 50000), "sockname": ("127.0.0.1", 9080)}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    raw = CIMultiDict(headers or [])
    request = make_mocked_request(method, target, headers=raw, transport=transport, app=app)
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
