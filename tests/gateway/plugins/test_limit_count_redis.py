"""limit-count with policy redis / redis-cluster against a real redis-server: exact shared windows, outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict
from servers.redis_server import RedisServer
from traffic_support import make_ctx

from gateway.errors import GatewayError
from gateway.plugins.limit_count import LimitCount, LimitCountConfig
from gateway.plugins.redis_policy import close_connections
from gateway.responses import ProxyResponse


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def redis_clients() -> AsyncIterator[None]:
    yield
    await close_connections()


def plugin(port: int, **fields: Any) -> LimitCount:
    """A limit-count as one gateway node would build it; two built alike behave as two nodes."""
    config = {"count": 5, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": port}
    return LimitCount(LimitCountConfig.model_validate({**config, **fields}))


async def outcome(limiter: LimitCount, **ctx: Any) -> int:
    try:
        await limiter.access(make_ctx(**ctx))
    except GatewayError as exc:
        return exc.status
    return 200


async def test_nodes_sharing_redis_allow_exactly_count_together(redis_server: RedisServer) -> None:
    nodes = [plugin(redis_server.port, count=50, key_type="constant", key="exact") for _ in range(2)]
    results = await asyncio.gather(*(outcome(nodes[i % 2]) for i in range(200)))
    assert results.count(200) == 50
    assert results.count(503) == 150


async def test_more_requests_at_once_than_connections_wait_for_one(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py refuses a call once its pool is used up; that must not read as "Redis is down".
    monkeypatch.setattr("gateway.plugins.redis_policy.MAX_CONNECTIONS", 4)
    limiter = plugin(redis_server.port, count=60, key_type="constant", key="pool")
    results = await asyncio.gather(*(outcome(limiter) for _ in range(80)))
    assert (results.count(200), results.count(503)) == (60, 20)


async def test_quota_headers_and_retry_after_come_from_redis(redis_server: RedisServer) -> None:
    limiter = plugin(redis_server.port, count=2, time_window=30, rejected_code=429, key="http_x_user")
    ctx = make_ctx(headers=[("X-User", "headers")])
    await limiter.access(ctx)
    response = ProxyResponse(200, CIMultiDict())
    await limiter.header_filter(ctx, response)
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "1"
    assert response.headers["X-RateLimit-Reset"] == "30"
    await limiter.access(make_ctx(headers=[("X-User", "headers")]))
    with pytest.raises(GatewayError) as refused:
        await limiter.access(make_ctx(headers=[("X-User", "headers")]))
    assert refused.value.status == 429
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert 29 <= int(refused.value.headers["Retry-After"]) <= 30


async def test_a_window_closes_after_time_window(redis_server: RedisServer) -> None:
    limiter = plugin(redis_server.port, count=1, time_window=1, key_type="constant", key="short")
    assert await outcome(limiter) == 200
    assert await outcome(limiter) == 503
    await asyncio.sleep(1.1)
    assert await outcome(limiter) == 200


async def test_routes_count_apart_unless_they_name_a_group(redis_server: RedisServer) -> None:
    alone = plugin(redis_server.port, count=1, key_type="constant", key="routes")
    assert await outcome(alone, route_id="a") == 200
    assert await outcome(alone, route_id="b") == 200
    assert await outcome(alone, route_id="a") == 503
    grouped = [plugin(redis_server.port, count=1, key_type="constant", key="routes", group="g") for _ in range(2)]
    assert await outcome(grouped[0], route_id="c") == 200
    assert await outcome(grouped[1], route_id="d") == 503


async def test_keys_count_apart(redis_server: RedisServer) -> None:
    limiter = plugin(redis_server.port, count=1)
    assert await outcome(limiter, peer="198.51.100.1") == 200
    assert await outcome(limiter, peer="198.51.100.2") == 200
    assert await outcome(limiter, peer="198.51.100.1") == 503


async def test_redis_stopped_follows_allow_degradation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        passing = plugin(server.port, count=1, key_type="constant", key="outage", allow_degradation=True)
        refusing = plugin(server.port, count=1, key_type="constant", key="outage2")
        assert [await outcome(passing), await outcome(passing)] == [200, 503]
        server.stop()
        started = time.monotonic()
        assert [await outcome(passing) for _ in range(20)] == [200] * 20
        assert [await outcome(refusing) for _ in range(20)] == [503] * 20
        assert time.monotonic() - started < 1.0
        # One line per outage and client, not one per request.
        assert len([r for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.message]) == 1
        server.start()
        await asyncio.sleep(1.05)  # calls fail fast for up to a second after a failure
        assert await outcome(refusing) == 200  # a fresh redis: a fresh window
        assert await outcome(refusing) == 503
    finally:
        server.stop()


async def test_a_redis_that_never_answers_costs_redis_timeout_at_most() -> None:
    # Accepts connections and says nothing: a hung or overloaded Redis.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        refusing = plugin(port, redis_timeout=200)
        started = time.monotonic()
        with pytest.raises(GatewayError) as refused:
            await refusing.access(make_ctx())
        assert refused.value.status == 503
        assert 0.15 < time.monotonic() - started < 1.0
        started = time.monotonic()
        assert await outcome(plugin(port, redis_timeout=200, allow_degradation=True)) == 200
        assert time.monotonic() - started < 0.1  # right after a failure: no second wait


async def test_a_wrong_password_is_an_unavailable_backend(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret")
    server.start()
    try:
        assert await outcome(plugin(server.port, count=1, redis_password="s3cret", key="remote_addr")) == 200
        assert await outcome(plugin(server.port, redis_password="wrong", key="uri")) == 503
    finally:
        server.stop()


async def test_redis_cluster_policy(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "cluster", cluster=True)
    server.start()
    try:
        config = {
            "policy": "redis-cluster",
            "redis_cluster_nodes": [f"127.0.0.1:{server.port}"],
            "redis_cluster_name": "test-cluster",
            "count": 10,
            "key_type": "constant",
            "key": "cluster",
        }
        nodes = [LimitCount(LimitCountConfig.model_validate({"time_window": 60, **config})) for _ in range(2)]
        results = await asyncio.gather(*(outcome(nodes[i % 2]) for i in range(40)))
        assert results.count(200) == 10
    finally:
        server.stop()
