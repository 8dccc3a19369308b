"""limit-req with policy redis / redis-cluster against a real redis-server: one bucket for every node, outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import Gateway, start_gateways, start_http_upstream
from servers.redis_server import RedisServer, redis_command
from traffic_support import config_issues, make_ctx, until

from gateway.errors import GatewayError
from gateway.plugins.limit_req import LimitReq, LimitReqConfig
from gateway.plugins.redis_policy import close_connections


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


def node(port: int, **fields: Any) -> LimitReq:
    """A limit-req as one gateway node would build it; two built alike behave as two nodes."""
    config = {"rate": 0.1, "burst": 4, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": port}
    return LimitReq(LimitReqConfig.model_validate({**config, **fields}))


async def outcome(limiter: LimitReq, **ctx: Any) -> int:
    try:
        await limiter.access(make_ctx(**ctx))
    except GatewayError as exc:
        return exc.status
    return 200


def test_config_accepts_apisix_redis_fields() -> None:
    redis = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6379, "redis_database": 1}
    redis |= {"redis_username": "u", "redis_password": "p", "redis_timeout": 500, "redis_ssl": False}
    assert config_issues("limit-req", {"rate": 1, "burst": 2, "nodelay": True, **redis}) == {}
    cluster = {"policy": "redis-cluster", "redis_cluster_nodes": ["10.0.0.1:6379"], "redis_cluster_name": "c"}
    assert config_issues("limit-req", {"rate": 1, "burst": 2, "allow_degradation": True, **cluster}) == {}


async def test_nodes_sharing_redis_drain_one_bucket(redis_server: RedisServer) -> None:
    # One request drains per 10 s, far longer than 40 calls take: exactly 1 + burst get through.
    nodes = [node(redis_server.port, nodelay=True, key_type="constant", key="shared") for _ in range(2)]
    results = await asyncio.gather(*(outcome(nodes[i % 2]) for i in range(40)))
    assert results.count(200) == 5
    assert results.count(503) == 35


async def test_the_delay_comes_from_the_shared_bucket_and_is_slept_unless_nodelay(redis_server: RedisServer) -> None:
    first, second = (node(redis_server.port, rate=2, burst=2, key_type="constant", key="delays") for _ in range(2))
    assert await first.access(make_ctx()) is None  # an empty bucket: no wait
    started = time.monotonic()
    assert await second.access(make_ctx()) is None  # one queued ahead of it, on the other node: 1/rate = 0.5 s
    assert 0.25 < time.monotonic() - started < 1.0
    fast = node(redis_server.port, rate=2, burst=2, nodelay=True, key_type="constant", key="nodelay")
    started = time.monotonic()
    assert [await outcome(fast) for _ in range(4)] == [200, 200, 200, 503]
    assert time.monotonic() - started < 1.0  # delays of 0, 0.5 and 1 s (1.5 s in all), none of them slept


async def test_refusals_carry_rejected_code_msg_and_retry_after(redis_server: RedisServer) -> None:
    limiter = node(redis_server.port, rate=0.5, burst=0, rejected_code=429, rejected_msg="slow down")
    await limiter.access(make_ctx(peer="198.51.100.9"))
    with pytest.raises(GatewayError) as refused:
        await limiter.access(make_ctx(peer="198.51.100.9"))
    assert (refused.value.status, refused.value.message) == (429, "slow down")
    assert refused.value.headers["Retry-After"] == "2"  # one request drains in 1/rate = 2 s
    assert await outcome(limiter, peer="198.51.100.10") == 200  # another key, another bucket


async def test_routes_and_keys_have_their_own_buckets(redis_server: RedisServer) -> None:
    limiter = node(redis_server.port, burst=0, key_type="constant", key="routes")
    assert await outcome(limiter, route_id="a") == 200
    assert await outcome(limiter, route_id="b") == 200
    assert await outcome(limiter, route_id="a") == 503


async def test_a_bucket_expires_once_drained(redis_server: RedisServer) -> None:
    limiter = node(redis_server.port, rate=10, burst=0, key_type="constant", key="expiry")
    assert limiter.redis is not None
    redis_key = limiter.redis.redis_key("r", "expiry")
    assert await outcome(limiter) == 200
    ttl = int(redis_command(redis_server.port, "PTTL", redis_key)[1:])
    assert 0 < ttl <= 101  # drained after 1/rate = 100 ms: then it is the same as no bucket at all

    async def gone() -> bool:
        return redis_command(redis_server.port, "EXISTS", redis_key) == b":0\r\n"

    await until(gone)
    assert await outcome(limiter) == 200


async def test_redis_stopped_follows_allow_degradation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        passing = node(server.port, burst=0, key_type="constant", key="outage", allow_degradation=True)
        refusing = node(server.port, burst=0, key_type="constant", key="outage2")
        assert [await outcome(passing), await outcome(passing)] == [200, 503]
        server.stop()
        started = time.monotonic()
        assert [await outcome(passing) for _ in range(20)] == [200] * 20
        assert [await outcome(refusing) for _ in range(20)] == [503] * 20
        assert time.monotonic() - started < 1.0
        warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.message]
        assert len(warnings) == 1 and warnings[0].startswith("limit-req: redis at 127.0.0.1:")
        server.start()  # a fresh (empty) Redis on the same port: limiting resumes within about a second

        async def answered() -> bool:
            return await outcome(refusing) == 200

        await until(answered)
        assert await outcome(refusing) == 503
    finally:
        server.stop()


async def test_a_redis_that_never_answers_costs_redis_timeout_at_most() -> None:
    with socket.socket() as silent:  # accepts connections and says nothing: a hung Redis
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        started = time.monotonic()
        assert await outcome(node(port, redis_timeout=200)) == 503
        assert 0.15 < time.monotonic() - started < 1.0
        started = time.monotonic()
        assert await outcome(node(port, redis_timeout=200, allow_degradation=True)) == 200
        assert time.monotonic() - started < 0.1  # right after a failure: no second wait


async def test_redis_cluster_policy(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "cluster", cluster=True)
    server.start()
    try:
        config = {
            "policy": "redis-cluster",
            "redis_cluster_nodes": [f"127.0.0.1:{server.port}"],
            "redis_cluster_name": "test-cluster",
            "rate": 0.1,
            "burst": 2,
            "nodelay": True,
            "key_type": "constant",
            "key": "cluster",
        }
        nodes = [LimitReq(LimitReqConfig.model_validate(config)) for _ in range(2)]
        results = await asyncio.gather(*(outcome(nodes[i % 2]) for i in range(12)))
        assert results.count(200) == 3
    finally:
        server.stop()


# Through real gateway processes.


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    process, port = start_http_upstream("req-redis")
    yield port
    process.stop()


async def test_two_gateway_processes_share_one_rate(
    tmp_path: Path, redis_server: RedisServer, upstream_port: int
) -> None:
    limit = {"rate": 0.1, "burst": 3, "nodelay": True, "key_type": "constant", "key": "gateways"}
    limit |= {"rejected_code": 429, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    config = {
        "upstreams": [{"id": "u", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}}],
        "routes": [{"id": "req", "uri": "/*", "upstream_id": "u", "plugins": {"limit-req": limit}}],
    }
    gateways = start_gateways(tmp_path, 2, config)
    try:
        async with aiohttp.ClientSession() as session:

            async def one(gateway: Gateway) -> int:
                async with session.get(f"{gateway.url}/echo") as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(gateways[i % 2]) for i in range(24)))
        assert statuses.count(200) == 4, statuses
        assert statuses.count(429) == 20
    finally:
        for gateway in gateways:
            gateway.process.stop()
