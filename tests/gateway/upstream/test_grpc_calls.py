"""call_with_retries against real gRPC backends: balancing, failover on UNAVAILABLE, health checks."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from processes import BIN, REPO, Process, start

from gateway.config.models import Upstream
from gateway.upstream.grpc import GrpcUpstream
from gateway.upstream.grpc_calls import call_with_retries, never_sent

BACKEND = REPO / "tests" / "servers" / "health_backend.py"
GET_STATS = "/bookstore.v1.Bookstore/GetStats"
SERVED_BY = "x-bookstore-served-by"
CANCEL = b"\x78\x01"  # field 15 = 1: unknown to GetStatsRequest (so g1, g2 ignore it); the busy server cancels


def start_backend(name: str, port: int = 0) -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(BACKEND), "--port", str(port), "--name", name])
    try:
        line = process.wait_for("health backend listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, int]]:
    started = [start_backend(name) for name in ("g1", "g2")]
    yield {"g1": started[0][1], "g2": started[1][1]}
    for process, _ in started:
        process.stop()


def served_by(initial: Any) -> str:
    return dict(initial)[SERVED_BY]


async def client(nodes: dict[str, int], **fields: Any) -> GrpcUpstream:
    return GrpcUpstream(Upstream.model_validate({"scheme": "grpc", "nodes": nodes, **fields}))


async def test_weights_hold_over_many_calls(backends: dict[str, int]) -> None:
    upstream = await client({f"127.0.0.1:{backends['g1']}": 3, f"127.0.0.1:{backends['g2']}": 1})
    try:
        counts: Counter[str] = Counter()
        for _ in range(400):
            _, initial, _ = await call_with_retries(upstream, GET_STATS, b"", timeout=5)
            counts[served_by(initial)] += 1
        assert counts == {"g1": 300, "g2": 100}  # smooth weighted round robin is exact
    finally:
        await upstream.close()


async def test_a_node_that_refuses_connections_is_skipped_without_a_failed_call(backends: dict[str, int]) -> None:
    dead = closed_port()
    checks = {"active": {"type": "tcp", "healthy": {"interval": 5}}, "passive": {}}
    upstream = await client({f"127.0.0.1:{dead}": 1, f"127.0.0.1:{backends['g1']}": 1}, checks=checks)
    try:
        results = [served_by((await call_with_retries(upstream, GET_STATS, b"", timeout=5))[1]) for _ in range(10)]
        assert results == ["g1"] * 10
        assert not upstream.node_set.states[0].healthy
    finally:
        await upstream.close()


async def test_without_retries_the_connect_failure_reaches_the_caller(backends: dict[str, int]) -> None:
    upstream = await client({f"127.0.0.1:{closed_port()}": 1, f"127.0.0.1:{backends['g1']}": 1}, retries=0)
    try:
        outcomes = []
        for _ in range(4):
            try:
                await call_with_retries(upstream, GET_STATS, b"", timeout=5)
                outcomes.append("ok")
            except grpc.aio.AioRpcError as err:
                assert never_sent(err)
                outcomes.append(err.code().name)
        assert sorted(outcomes) == ["UNAVAILABLE", "UNAVAILABLE", "ok", "ok"]
    finally:
        await upstream.close()


@pytest.fixture
async def busy_server() -> AsyncIterator[tuple[int, Counter[str]]]:
    """A server whose method answers UNAVAILABLE itself: the call reached it."""
    calls: Counter[str] = Counter()

    async def busy(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls["busy"] += 1
        code = grpc.StatusCode.CANCELLED if request == CANCEL else grpc.StatusCode.UNAVAILABLE
        await context.abort(code, "overloaded")
        return b""

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(busy)
    generic = grpc.method_handlers_generic_handler("bookstore.v1.Bookstore", {"GetStats": handler})
    server.add_generic_rpc_handlers([generic])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, calls
    await server.stop(0)


async def test_unavailable_from_a_server_is_retried_only_when_repeatable(
    backends: dict[str, int], busy_server: tuple[int, Counter[str]]
) -> None:
    port, calls = busy_server
    nodes = {f"127.0.0.1:{port}": 1, f"127.0.0.1:{backends['g2']}": 1}
    upstream = await client(nodes)
    try:
        # Round robin starts on the busy node: not repeatable, so its answer is the caller's.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call_with_retries(upstream, GET_STATS, b"", timeout=5)
        assert raised.value.details() == "overloaded"
        assert not never_sent(raised.value)
        await call_with_retries(upstream, GET_STATS, b"", timeout=5)  # g2
        _, initial, _ = await call_with_retries(upstream, GET_STATS, b"", timeout=5, idempotent=True)
        assert served_by(initial) == "g2"
        assert calls["busy"] == 2
    finally:
        await upstream.close()


async def test_a_killed_node_stops_getting_calls_and_gets_them_back_after_restart(backends: dict[str, int]) -> None:
    victim, port = start_backend("victim")
    checks = {
        "active": {
            "type": "grpc",
            "grpc_service": "bookstore.v1.Bookstore",
            "timeout": 0.5,
            "healthy": {"interval": 0.1, "successes": 1},
            "unhealthy": {"interval": 0.1, "tcp_failures": 1},
        },
        "passive": {"unhealthy": {"tcp_failures": 1}},
    }
    upstream = await client({f"127.0.0.1:{port}": 1, f"127.0.0.1:{backends['g1']}": 1}, checks=checks)
    state = upstream.node_set.states[0]
    try:

        async def calls(n: int) -> Counter[str]:
            seen: Counter[str] = Counter()
            for _ in range(n):
                _, initial, _ = await call_with_retries(upstream, GET_STATS, b"", timeout=5)
                seen[served_by(initial)] += 1
            return seen

        assert (await calls(20))["victim"] == 10
        victim.stop()
        assert await calls(20) == {"g1": 20}  # no failed call: the refused attempts went to g1
        assert not state.healthy
        victim, _ = start_backend("victim", port)
        deadline = time.monotonic() + 5
        while not state.healthy:
            assert time.monotonic() < deadline, "the restarted node was not found healthy"
            await asyncio.sleep(0.05)
        seen = await calls(20)
        assert seen["victim"] >= 5, seen
    finally:
        victim.stop()
        await upstream.close()


async def test_the_deadline_covers_every_attempt(backends: dict[str, int]) -> None:
    upstream = await client({f"127.0.0.1:{closed_port()}": 1, f"127.0.0.1:{backends['g1']}": 1})
    try:
        started = time.monotonic()
        _, initial, _ = await call_with_retries(upstream, GET_STATS, b"", timeout=2)
        assert served_by(initial) == "g1"
        assert time.monotonic() - started < 2
    finally:
        await upstream.close()


async def test_cancelled_by_the_server_is_retried_only_when_repeatable(
    backends: dict[str, int], busy_server: tuple[int, Counter[str]]
) -> None:
    port, calls = busy_server
    upstream = await client({f"127.0.0.1:{port}": 1, f"127.0.0.1:{backends['g2']}": 1})
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call_with_retries(upstream, GET_STATS, CANCEL, timeout=5)
        assert raised.value.code() == grpc.StatusCode.CANCELLED
        await call_with_retries(upstream, GET_STATS, b"", timeout=5)  # g2's turn
        _, initial, _ = await call_with_retries(upstream, GET_STATS, CANCEL, timeout=5, idempotent=True)
        assert served_by(initial) == "g2"
        assert calls["busy"] == 2
    finally:
        await upstream.close()
