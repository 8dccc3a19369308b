"""Helpers for the traffic plugin tests: a hand-built RequestContext and config-error paths via the loader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.consumers import EMPTY_CONSUMERS, Consumer
from gateway.context import RequestContext


def make_ctx(
    *,
    peer: str = "192.0.2.7",
    client_ip: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    query: str = "",
    path: str = "/echo",
    route_id: str = "r",
    consumer: Consumer | None = None,
) -> RequestContext:
    extra = {"peername": (peer, 50000), "sockname": ("127.0.0.1", 9080), "sslcontext": None}
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    raw_headers = CIMultiDict(headers or [])
    target = f"{path}?{query}" if query else path
    request = make_mocked_request("GET", target, headers=raw_headers, transport=transport)
    return RequestContext(
        request=request,
        route_id=route_id,
        method="GET",
        path=path,
        query=query,
        headers=CIMultiDict(raw_headers),
        client_ip=client_ip if client_ip is not None else peer,
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
        consumer=consumer,
    )


def config_issues(plugin: str, config: Any) -> dict[str, str]:
    """Load a one-route document using `plugin`; the issues it is refused with, by field path."""
    document = {
        "upstreams": [{"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {plugin: config}}],
    }
    try:
        load_document(document)
    except ConfigError as exc:
        return {issue.path: issue.message for issue in exc.issues}
    return {}


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> float:
    """Seconds until `check` holds, polled every 20 ms; fails past the deadline."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, "not within the deadline"
        await asyncio.sleep(0.02)
