"""limit-conn with policy redis / redis-cluster against a real redis-server: one count for every node, outages."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import Gateway, start_gateways, start_http_upstream
from multidict import CIMultiDict
from servers.local_servers import free_port
from servers.redis_server import RedisServer, redis_command
from traffic_support import config_issues, make_ctx, until

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.limit_conn import LimitConn, LimitConnConfig
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


def node(port: int, key: str, **fields: Any) -> LimitConn:
    """A limit-conn as one gateway node would build it (constant `key`); two built alike behave as two nodes."""
    config = {"conn": 2, "burst": 0, "default_conn_delay": 0.1, "only_use_default_delay": True}
    config |= {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": port, "key_type": "constant", "key": key}
    return LimitConn(LimitConnConfig.model_validate({**config, **fields}))


def in_flight(port: int, key: str, route: str = "r") -> int:
    """What Redis counts in flight for `key` on `route` (expired entries included until the next access)."""
    return int(redis_command(port, "ZCARD", f"protogate:limit-conn:route:{route}:{key}")[1:])


async def outcome(limiter: LimitConn, ctx: RequestContext) -> int:
    try:
        await limiter.access(ctx)
    except GatewayError as exc:
        return exc.status
    return 200


def response() -> ProxyResponse:
    return ProxyResponse(200, CIMultiDict())


def test_config_accepts_apisix_redis_fields() -> None:
    base = {"conn": 1, "burst": 1, "default_conn_delay": 0.5, "key_ttl": 60}
    redis = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6379, "redis_password": "p"}
    assert config_issues("limit-conn", {**base, **redis, "redis_database": 2, "redis_timeout": 200}) == {}
    cluster = {"policy": "redis-cluster", "redis_cluster_nodes": ["10.0.0.1:6379"], "redis_cluster_name": "c"}
    assert config_issues("limit-conn", {**base, **cluster, "allow_degradation": True}) == {}
    assert LimitConnConfig(conn=1, burst=0, default_conn_delay=1).key_ttl == 3600  # APISIX's default


async def test_nodes_sharing_redis_count_one_number_in_flight(redis_server: RedisServer) -> None:
    port = redis_server.port
    first, second = node(port, "shared"), node(port, "shared")
    held = [make_ctx(), make_ctx()]
    assert [await outcome(first, held[0]), await outcome(second, held[1])] == [200, 200]
    assert [await outcome(first, make_ctx()), await outcome(second, make_ctx())] == [503, 503]
    assert in_flight(port, "shared") == 2  # refused requests hold nothing
    await first.log(held[0], response())
    held.append(make_ctx())
    assert await outcome(second, held[2]) == 200  # the slot node one gave back
    for ctx, limiter in zip(held[1:], (second, second), strict=True):
        await limiter.log(ctx, response())
    await first.log(held[0], response())  # a second log never releases twice
    assert in_flight(port, "shared") == 0


async def test_exact_under_concurrency_across_nodes(redis_server: RedisServer) -> None:
    nodes = [node(redis_server.port, "exact", conn=5) for _ in range(2)]
    contexts = [make_ctx() for _ in range(40)]
    results = await asyncio.gather(*(outcome(nodes[i % 2], ctx) for i, ctx in enumerate(contexts)))
    assert results.count(200) == 5
    assert in_flight(redis_server.port, "exact") == 5
    for i, ctx in enumerate(contexts):
        await nodes[i % 2].log(ctx, response())
    assert in_flight(redis_server.port, "exact") == 0


async def test_burst_is_delayed_by_the_shared_count_and_past_it_refused(redis_server: RedisServer) -> None:
    fields = {"conn": 1, "burst": 1, "default_conn_delay": 0.3, "rejected_code": 429, "rejected_msg": "busy"}
    first, second = node(redis_server.port, "burst", **fields), node(redis_server.port, "burst", **fields)
    held = [make_ctx(), make_ctx()]
    await first.access(held[0])
    started = time.monotonic()
    await second.access(held[1])  # second in flight, over conn: waits one default_conn_delay
    assert 0.25 < time.monotonic() - started < 1.0
    with pytest.raises(GatewayError) as refused:
        await first.access(make_ctx())
    assert (refused.value.status, refused.value.message, refused.value.headers["Retry-After"]) == (429, "busy", "1")
    await first.log(held[0], response())
    await second.log(held[1], response())
    assert in_flight(redis_server.port, "burst") == 0


async def test_a_crashed_nodes_slots_come_back_after_key_ttl(redis_server: RedisServer) -> None:
    port = redis_server.port
    crashed, survivor = node(port, "ttl", conn=1, key_ttl=1), node(port, "ttl", conn=1, key_ttl=1)
    held = make_ctx()  # kept referenced and never logged: a node that died with the request in flight
    assert await outcome(crashed, held) == 200
    assert 0 < int(redis_command(port, "PTTL", "protogate:limit-conn:route:r:ttl")[1:]) <= 1000
    assert await outcome(survivor, make_ctx()) == 503
    survivor_ctx = make_ctx()

    async def admitted() -> bool:
        return await outcome(survivor, survivor_ctx) == 200

    assert await until(admitted) > 0.5  # the entry counted for key_ttl = 1 s, not forever
    await survivor.log(survivor_ctx, response())
    # The key itself goes too, once nothing has been counted in for key_ttl.
    await until(lambda: redis_command(port, "EXISTS", "protogate:limit-conn:route:r:ttl") == b":0\r\n")


async def test_a_release_that_fails_is_retried_when_redis_answers_again(redis_server: RedisServer) -> None:
    port = redis_server.port
    limiter = node(port, "retry", conn=1, redis_timeout=200)
    held = make_ctx()
    await limiter.access(held)
    assert redis_command(port, "CLIENT", "PAUSE", "10000", "WRITE") == b"+OK\r\n"  # writes hang, as in an overload
    try:
        started = time.monotonic()
        await limiter.log(held, response())
        assert time.monotonic() - started < 1.0  # bounded by redis_timeout
        assert list(limiter.pending) == [("protogate:limit-conn:route:r:retry", held.vars["limit-conn"][0].member)]
    finally:
        redis_command(port, "CLIENT", "UNPAUSE")
    assert in_flight(port, "retry") == 1
    ctx = make_ctx()

    async def admitted() -> bool:  # each access first retries what is pending, in the background
        return await outcome(limiter, ctx) == 200

    await until(admitted)
    assert not limiter.pending
    await limiter.log(ctx, response())
    assert in_flight(port, "retry") == 0


async def test_a_cancelled_log_phase_still_gives_the_slot_back(redis_server: RedisServer) -> None:
    limiter = node(redis_server.port, "cancel-log")
    held = make_ctx()
    await limiter.access(held)
    logging_task = asyncio.create_task(limiter.log(held, response()))
    await asyncio.sleep(0)  # let it send the removal, then cancel it (the client went away, a shutdown)
    logging_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await logging_task
    await until(lambda: in_flight(redis_server.port, "cancel-log") == 0)


async def test_an_access_cancelled_while_counting_in_leaves_nothing_counted(redis_server: RedisServer) -> None:
    port = redis_server.port
    limiter = node(port, "cancel-access", conn=1, redis_timeout=5000)
    assert redis_command(port, "CLIENT", "PAUSE", "10000", "WRITE") == b"+OK\r\n"
    try:
        access = asyncio.create_task(limiter.access(make_ctx()))
        await until(lambda: b"blocked_clients:1\r\n" in redis_command(port, "INFO", "clients"))
        access.cancel()
        with pytest.raises(asyncio.CancelledError):
            await access
    finally:
        redis_command(port, "CLIENT", "UNPAUSE")
    await until(lambda: not limiter.pending and in_flight(port, "cancel-access") == 0)
    assert await outcome(limiter, make_ctx()) == 200


async def test_a_request_that_never_reaches_the_log_phase_gives_its_slot_back(redis_server: RedisServer) -> None:
    limiter = node(redis_server.port, "abandoned", conn=1)
    ctx = make_ctx()
    await limiter.access(ctx)
    del ctx  # e.g. sending the answer failed and the log phase never ran
    gc.collect()
    later = make_ctx()

    async def admitted() -> bool:  # the next access gives the abandoned slot back, in the background
        return await outcome(limiter, later) == 200

    await until(admitted)
    await limiter.log(later, response())
    assert in_flight(redis_server.port, "abandoned") == 0


async def test_redis_stopped_follows_allow_degradation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        passing = node(server.port, "outage", conn=1, allow_degradation=True)
        refusing = node(server.port, "outage2", conn=1)
        held = make_ctx()
        assert [await outcome(passing, held), await outcome(passing, make_ctx())] == [200, 503]
        server.stop()
        started = time.monotonic()
        assert [await outcome(passing, make_ctx()) for _ in range(20)] == [200] * 20
        assert [await outcome(refusing, make_ctx()) for _ in range(20)] == [503] * 20
        await passing.log(held, response())  # the release fails fast and waits for Redis to come back
        assert time.monotonic() - started < 1.0
        member = held.vars["limit-conn"][0].member
        assert ("protogate:limit-conn:route:r:outage", member) in passing.pending
        warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.message]
        assert len(warnings) == 1 and warnings[0].startswith("limit-conn: redis at 127.0.0.1:")
        server.start()  # a fresh Redis: nothing in flight there

        async def admitted() -> bool:
            return await outcome(refusing, make_ctx()) == 200

        await until(admitted)
    finally:
        server.stop()


async def test_a_redis_that_never_answers_costs_redis_timeout_at_most() -> None:
    with socket.socket() as silent:  # accepts connections and says nothing: a hung Redis
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        started = time.monotonic()
        assert await outcome(node(port, "silent", redis_timeout=200), make_ctx()) == 503
        assert 0.15 < time.monotonic() - started < 1.0
        started = time.monotonic()
        assert await outcome(node(port, "silent", redis_timeout=200, allow_degradation=True), make_ctx()) == 200
        assert time.monotonic() - started < 0.1  # right after a failure: no second wait


async def test_redis_cluster_policy(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "cluster", cluster=True)
    server.start()
    try:
        config = {
            "policy": "redis-cluster",
            "redis_cluster_nodes": [f"127.0.0.1:{server.port}"],
            "redis_cluster_name": "test-cluster",
            "conn": 3,
            "burst": 0,
            "default_conn_delay": 0.1,
            "key_type": "constant",
            "key": "cluster",
        }
        nodes = [LimitConn(LimitConnConfig.model_validate(config)) for _ in range(2)]
        contexts = [make_ctx() for _ in range(12)]
        results = await asyncio.gather(*(outcome(nodes[i % 2], ctx) for i, ctx in enumerate(contexts)))
        assert results.count(200) == 3
        for i, ctx in enumerate(contexts):
            await nodes[i % 2].log(ctx, response())
        assert await outcome(nodes[0], make_ctx()) == 200
    finally:
        server.stop()


# Through real gateway processes: slots are given back after the answer, after an upstream error,
# and when the client disconnects.


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    process, port = start_http_upstream("conn-redis")
    yield port
    process.stop()


def gateway_config(upstream_port: int, redis_port: int, **route_fields: Any) -> dict[str, Any]:
    limit = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 429, "key_type": "constant"}
    limit |= {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_port, "redis_timeout": 500}
    upstreams = [
        {"id": "u", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}, "timeout": {"read": 5}},
        {"id": "dead", "scheme": "http", "nodes": {f"127.0.0.1:{free_port()}": 1}},
    ]
    routes = [
        {
            "id": host.split(".")[0],
            "uri": "/*",
            "host": host,
            "upstream_id": upstream,
            "plugins": {"limit-conn": {**limit, "key": host, **fields}},
        }
        for host, (upstream, fields) in route_fields.items()
    ]
    return {"upstreams": upstreams, "routes": routes}


async def get(session: aiohttp.ClientSession, gateway: Gateway, host: str, path: str = "/echo") -> int:
    async with session.get(f"{gateway.url}{path}", headers={"Host": host}) as answer:
        await answer.read()
        return answer.status


async def test_two_gateway_processes_share_one_count(
    tmp_path: Path, redis_server: RedisServer, upstream_port: int
) -> None:
    port = redis_server.port
    config = gateway_config(upstream_port, port, **{"shared.test": ("u", {}), "broken.test": ("dead", {})})
    first, second = start_gateways(tmp_path, 2, config)
    try:
        async with aiohttp.ClientSession() as session:
            slow = asyncio.create_task(get(session, first, "shared.test", "/slow?ms=1500"))
            await until(lambda: in_flight(port, "shared.test", "shared") == 1)
            assert await get(session, second, "shared.test") == 429  # the other node sees the slot taken
            assert await slow == 200
            await until(lambda: in_flight(port, "shared.test", "shared") == 0)  # given back in the log phase
            assert await get(session, second, "shared.test") == 200

            # An upstream that refuses: the request errors (502) and its slot still comes back.
            assert await get(session, first, "broken.test") == 502
            await until(lambda: in_flight(port, "broken.test", "broken") == 0)
            assert await get(session, second, "broken.test") == 502

        # A client that goes away mid-request: the slot comes back once the gateway is done with it.
        with socket.create_connection((first.host, first.port)) as client:
            client.sendall(b"GET /slow?ms=800 HTTP/1.1\r\nHost: shared.test\r\n\r\n")
            await until(lambda: in_flight(port, "shared.test", "shared") == 1)
        await until(lambda: in_flight(port, "shared.test", "shared") == 0)
    finally:
        for gateway in (first, second):
            gateway.process.stop()


async def test_a_gateway_with_redis_stopped_passes_or_refuses_as_configured(tmp_path: Path, upstream_port: int) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    routes = {"degrade.test": ("u", {"allow_degradation": True}), "strict.test": ("u", {})}
    (gateway,) = start_gateways(tmp_path, 1, gateway_config(upstream_port, server.port, **routes))
    try:
        async with aiohttp.ClientSession() as session:
            assert [await get(session, gateway, host) for host in ("degrade.test", "strict.test")] == [200, 200]
            server.stop()
            started = time.monotonic()
            assert [await get(session, gateway, "degrade.test") for _ in range(10)] == [200] * 10
            assert [await get(session, gateway, "strict.test") for _ in range(10)] == [503] * 10
            assert time.monotonic() - started < 2.0
        assert any("limit-conn: redis at" in line for line in gateway.process.output)
    finally:
        gateway.process.stop()
        server.stop()
