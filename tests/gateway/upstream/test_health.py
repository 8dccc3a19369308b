"""Active health checks against real listeners in this process: HTTP statuses, TCP connects, grpc.health.v1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.config.models import ActiveCheck, Upstream
from gateway.tls import ClientTls
from gateway.upstream.health import probe_tls
from gateway.upstream.node_state import NodeSet

FAST = {"healthy": {"interval": 0.05, "successes": 1}, "unhealthy": {"interval": 0.05}, "timeout": 0.5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def node_set(ports: list[int], check: dict[str, Any], scheme: str = "http") -> NodeSet:
    upstream = Upstream.model_validate(
        {"scheme": scheme, "nodes": {f"127.0.0.1:{port}": 1 for port in ports}, "checks": {"active": check}}
    )
    return NodeSet(upstream)


@pytest.fixture
async def http_node() -> AsyncIterator[tuple[int, dict[str, int]]]:
    state = {"status": 200}
    seen: list[str] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Probe", ""))
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state["seen"] = seen  # type: ignore[assignment]
    yield port, state
    await runner.cleanup()


async def test_http_probe_takes_out_a_failing_node_and_brings_it_back(http_node: tuple[int, dict[str, Any]]) -> None:
    port, state = http_node
    check = {"type": "http", "http_path": "/healthz", "req_headers": ["X-Probe: yes"], **FAST}
    check["unhealthy"] = {"interval": 0.05, "http_failures": 2}
    nodes = node_set([port], check)
    try:
        await eventually(lambda: bool(state["seen"]))
        assert state["seen"][0] == "yes"
        state["status"] = 503
        await eventually(lambda: not nodes.states[0].healthy)
        state["status"] = 200
        await eventually(lambda: nodes.states[0].healthy)
    finally:
        await nodes.close()


async def test_tcp_probe_follows_the_listener() -> None:
    port = free_port()
    check = {"type": "tcp", **FAST, "unhealthy": {"interval": 0.05, "tcp_failures": 1}}
    nodes = node_set([port], check)
    try:
        await eventually(lambda: not nodes.states[0].healthy)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        async with server:
            await eventually(lambda: nodes.states[0].healthy)
    finally:
        await nodes.close()


async def test_grpc_probe_asks_grpc_health_for_the_service() -> None:
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("shop.Cart", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    check = {"type": "grpc", "grpc_service": "shop.Cart", **FAST, "unhealthy": {"interval": 0.05, "http_failures": 1}}
    nodes = node_set([port], check, scheme="grpc")
    other = node_set([port], {**check, "grpc_service": "shop.Unknown"}, scheme="grpc")
    try:
        await eventually(lambda: not other.states[0].healthy)  # NOT_FOUND: the node does not serve it
        assert nodes.states[0].healthy
        await health.set("shop.Cart", health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(lambda: not nodes.states[0].healthy)
        await health.set("shop.Cart", health_pb2.HealthCheckResponse.SERVING)
        await eventually(lambda: nodes.states[0].healthy)
        await server.stop(0)
        await eventually(lambda: not nodes.states[0].healthy)  # UNAVAILABLE counts as a TCP failure
    finally:
        await nodes.close()
        await other.close()
        await server.stop(0)


async def test_close_stops_the_probes(http_node: tuple[int, dict[str, Any]]) -> None:
    port, state = http_node
    nodes = node_set([port], {"type": "http", "http_path": "/healthz", **FAST})
    await eventually(lambda: bool(state["seen"]))
    await nodes.close()
    count = len(state["seen"])
    await asyncio.sleep(0.2)
    assert len(state["seen"]) == count


def test_https_probes_use_the_upstreams_tls_and_turn_verification_off_only_when_asked() -> None:
    upstream_tls = ClientTls(ca=b"-----BEGIN CERTIFICATE-----", bundle=None, server_name="shop.internal")
    verifying = ActiveCheck(type="https")
    assert probe_tls(upstream_tls, verifying) is upstream_tls  # the object the upstream built, not a copy
    relaxed = probe_tls(upstream_tls, ActiveCheck(type="https", https_verify_certificate=False))
    assert (relaxed.verify, relaxed.ca, relaxed.server_name) == (False, upstream_tls.ca, "shop.internal")
    assert probe_tls(None, verifying) == ClientTls(ca=None, bundle=None, server_name=None, verify=True)
