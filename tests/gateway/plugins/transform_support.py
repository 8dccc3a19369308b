"""Helpers for the transform plugin tests: config-error paths via the loader, a hand-built RequestContext."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.consumers import EMPTY_CONSUMERS
from gateway.context import RequestContext
from gateway.responses import ProxyResponse

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}


def document(name: str, config: Any) -> dict[str, Any]:
    route = {"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {name: config}}
    return {"upstreams": [UPSTREAM], "routes": [route]}


def issues(name: str, config: Any) -> list[str]:
    """The loader's issues for a route that uses plugin `name` with `config`, as 'path: message' strings."""
    with pytest.raises(ConfigError) as caught:
        load_document(document(name, config))
    return [str(issue) for issue in caught.value.issues]


def loads(name: str, config: Any) -> Any:
    """The validated config of plugin `name`, through the loader."""
    return load_document(document(name, config)).route_plugins["r"][name].config


def make_ctx(
    target: str = "/echo",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    scheme: str = "http",
) -> RequestContext:
    transport = mock.Mock()
    extra = {"peername": ("192.0.2.7", 50000), "sockname": ("127.0.0.1", 9080)}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    raw = CIMultiDict(headers or [])
    sslcontext = mock.Mock() if scheme == "https" else None
    request = make_mocked_request(method, target, headers=raw, transport=transport, sslcontext=sslcontext)
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


async def chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part
