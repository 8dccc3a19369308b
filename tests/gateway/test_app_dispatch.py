"""The real listeners' dispatch (EdgeRunner calling the app's handler directly) answers as aiohttp's own routing does.

The same config is served twice: through EdgeRunner, which skips aiohttp's per-request route resolution,
and through a stock AppRunner (app._handle, as aiohttp's test client uses). Every raw request below must
get the same answer from both, odd targets and Expect included.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.app import build_app
from gateway.config.loader import load_document
from gateway.edge import EDGE_HANDLER, EdgeRunner

CONFIG = {
    "upstreams": [{"id": "nowhere", "nodes": {"127.0.0.1:9": 1}}],
    "routes": [
        {
            "id": "fault",
            "uri": "/fault",
            "upstream_id": "nowhere",
            "plugins": {"fault-injection": {"abort": {"http_status": 200, "body": "from the plugin"}}},
        }
    ],
}


async def _serve(runner: web.AppRunner) -> tuple[str, int]:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    return host, port


@pytest.fixture
async def listeners() -> AsyncIterator[tuple[tuple[str, int], tuple[str, int]]]:
    edge = EdgeRunner(build_app(load_document(CONFIG)), handle_signals=False, header_timeout=5, body_timeout=5)
    stock = web.AppRunner(build_app(load_document(CONFIG)), handle_signals=False)
    try:
        yield await _serve(edge), await _serve(stock)
    finally:
        await edge.cleanup()
        await stock.cleanup()
        gc.unfreeze()  # EdgeRunner froze this test process's objects


async def _exchange(address: tuple[str, int], head: bytes, body: bytes = b"") -> bytes:
    """Send a request (the body only once the head was answered with 100 Continue, if it asks), read to EOF."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(head)
        if body:
            if b"100-continue" in head:
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            writer.write(body)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _comparable(raw: bytes) -> tuple[str, list[str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, sorted(line for line in lines if not line.lower().startswith("date:")), body


def _head(line: str, *headers: str) -> bytes:
    return "\r\n".join([line, "Host: gw", *headers, "Connection: close", "", ""]).encode("latin-1")


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (_head("GET /fault HTTP/1.1"), b"", 200),
        (_head("GET /nothing HTTP/1.1"), b"", 404),
        (_head("GET /fault?a=1 HTTP/1.1", "X_Forwarded_For: 6.6.6.6"), b"", 200),
        (_head("GET http://example.test/fault HTTP/1.1"), b"", 200),
        # What the catch-all route's regex does not match is aiohttp's own 404, before the handler.
        (_head("OPTIONS * HTTP/1.1"), b"", 404),
        (_head("GET /fa%0Ault HTTP/1.1"), b"", 404),
        (_head("POST /fault HTTP/1.1", "Expect: 100-continue", "Content-Length: 2"), b"{}", 200),
        (_head("POST /fault HTTP/1.1", "Expect: bogus", "Content-Length: 0"), b"", 417),
    ],
)
async def test_edge_dispatch_answers_as_aiohttp_routing_does(
    listeners: tuple[tuple[str, int], tuple[str, int]], head: bytes, body: bytes, status: int
) -> None:
    edge, stock = listeners
    direct = _comparable(await _exchange(edge, head, body))
    routed = _comparable(await _exchange(stock, head, body))
    assert direct == routed
    assert direct[0].startswith(f"HTTP/1.1 {status} "), direct


def test_the_gateway_app_names_its_edge_handler() -> None:
    assert EDGE_HANDLER in build_app(load_document(CONFIG))
