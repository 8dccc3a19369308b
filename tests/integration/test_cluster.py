"""A cluster of gateway processes: limit-count shared through one real Redis, config shared through one real etcd."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import Gateway, GatewayFactory
from processes import BIN, REPO, start
from servers.etcd_server import EtcdServer, replace_history
from servers.redis_server import RedisServer


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    process = start([str(BIN / "python"), str(REPO / "tests/servers/http_upstream.py"), "--port", "0"])
    try:
        line = process.wait_for("http upstream listening on")
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def cluster_config(upstream_port: int, redis_port: int, **limits: dict[str, Any]) -> dict[str, Any]:
    """One route per host, each with a limit-count on the shared Redis."""
    redis = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_port, "redis_timeout": 500}
    routes = [
        {
            "id": host.replace(".", "-"),
            "uri": "/*",
            "host": host,
            "upstream_id": "echo",
            "plugins": {"limit-count": {"time_window": 60, "key_type": "constant", "key": host, **redis, **fields}},
        }
        for host, fields in limits.items()
    ]
    upstream = {"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}, "timeout": {"read": 3}}
    return {"upstreams": [upstream], "routes": routes}


async def statuses(gateways: list[Gateway], host: str, requests: int) -> list[int]:
    """`requests` sent at once, spread over the gateways in turn."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(gateway: Gateway) -> int:
            async with session.get(f"{gateway.url}/echo", headers={"Host": host}) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one(gateways[i % len(gateways)]) for i in range(requests))))


async def test_two_gateways_allow_exactly_count_together(
    gateway_factory: GatewayFactory, upstream_port: int, redis_server: RedisServer
) -> None:
    config = cluster_config(upstream_port, redis_server.port, **{"shared.test": {"count": 50, "rejected_code": 429}})
    gateways = [gateway_factory(config), gateway_factory(config)]
    results = await statuses(gateways, "shared.test", 200)
    assert results.count(200) == 50, results
    assert results.count(429) == 150


async def test_redis_stopped_passes_or_refuses_as_configured(
    gateway_factory: GatewayFactory, upstream_port: int, redis_server: RedisServer
) -> None:
    config = cluster_config(
        upstream_port,
        redis_server.port,
        **{"degrade.test": {"count": 100, "allow_degradation": True}, "strict.test": {"count": 100}},
    )
    gateways = [gateway_factory(config), gateway_factory(config)]
    assert await statuses(gateways, "degrade.test", 4) == [200] * 4
    assert await statuses(gateways, "strict.test", 4) == [200] * 4
    redis_server.stop()
    started = time.monotonic()
    assert await statuses(gateways, "degrade.test", 20) == [200] * 20
    assert await statuses(gateways, "strict.test", 20) == [503] * 20
    assert time.monotonic() - started < 2.0
    assert any("letting requests through uncounted" in line for line in gateways[0].process.output)
    redis_server.start()  # same port, a fresh (empty) Redis: counting resumes within about a second
    deadline = time.monotonic() + 5
    while await statuses(gateways, "strict.test", 2) != [200, 200]:
        assert time.monotonic() < deadline, "strict.test did not recover after Redis came back"
        await asyncio.sleep(0.2)


# Two gateway processes on one etcd: one writes through its Admin API, both serve what etcd holds.

ADMIN_KEY = "cluster-admin-key"


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()


def etcd_node(etcd: EtcdServer, *, admin: bool) -> dict[str, Any]:
    config: dict[str, Any] = {"store": {"type": "etcd", "endpoints": [f"http://{etcd.endpoint}"], "timeout": 1}}
    if admin:
        config["admin"] = {"listen": "127.0.0.1:0", "key": ADMIN_KEY}
    return config


def admin_url(gateway: Gateway) -> str:
    line = next(line for line in gateway.process.output if "admin API on http://" in line)
    return line.rsplit("http://", 1)[1].strip()


async def admin_request(gateway: Gateway, kind: str, obj_id: str, body: dict[str, Any]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://{admin_url(gateway)}/protogate/admin/{kind}/{obj_id}", json=body, headers={"X-API-KEY": ADMIN_KEY}
        ) as response,
    ):
        return response.status, await response.text()


async def admin_put(gateway: Gateway, kind: str, obj_id: str, body: dict[str, Any]) -> None:
    status, text = await admin_request(gateway, kind, obj_id, body)
    assert status in (200, 201), text


async def until_served(gateways: list[Gateway], host: str, timeout: float) -> float:
    """Seconds until every gateway answers `host` with 200."""
    started = time.monotonic()
    while await statuses(gateways, host, len(gateways)) != [200] * len(gateways):
        assert time.monotonic() - started < timeout, f"{host} not served by every node within {timeout}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_route_created_on_one_node_serves_on_the_other(
    gateway_factory: GatewayFactory, upstream_port: int, etcd_server: EtcdServer
) -> None:
    node_a = gateway_factory(etcd_node(etcd_server, admin=True))
    node_b = gateway_factory(etcd_node(etcd_server, admin=False))
    await admin_put(node_a, "upstreams", "echo", {"scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}})
    await admin_put(node_a, "routes", "r1", {"uri": "/*", "host": "etcd.test", "upstream_id": "echo"})
    assert await until_served([node_b], "etcd.test", timeout=1.0) < 1.0
    assert await statuses([node_a], "etcd.test", 1) == [200]


async def test_both_nodes_keep_serving_while_etcd_is_away(
    gateway_factory: GatewayFactory, upstream_port: int, etcd_server: EtcdServer
) -> None:
    node_a = gateway_factory(etcd_node(etcd_server, admin=True))
    node_b = gateway_factory(etcd_node(etcd_server, admin=False))
    await admin_put(node_a, "upstreams", "echo", {"scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}})
    await admin_put(node_a, "routes", "r1", {"uri": "/*", "host": "before.test", "upstream_id": "echo"})
    await until_served([node_a, node_b], "before.test", timeout=2.0)
    etcd_server.stop()
    for _ in range(5):
        assert await statuses([node_a, node_b], "before.test", 20) == [200] * 20
        await asyncio.sleep(0.2)
    # A write while etcd is down fails, clearly, after the store's connect wait (2 s), and nothing changes.
    started = time.monotonic()
    status, text = await admin_request(
        node_a, "routes", "r2", {"uri": "/*", "host": "lost.test", "upstream_id": "echo"}
    )
    assert status == 503 and "etcd unreachable" in text and "no connection within 2s" in text, text
    assert time.monotonic() - started < 3.0
    assert await statuses([node_a], "lost.test", 1) == [404]
    etcd_server.start()  # same port and data: the watches resume from the revision they had
    # The first write goes through at once, though the node's etcd channel may be between reconnect attempts.
    await admin_put(node_a, "routes", "r2", {"uri": "/*", "host": "after.test", "upstream_id": "echo"})
    await until_served([node_a, node_b], "after.test", timeout=5.0)
    assert await statuses([node_a, node_b], "before.test", 2) == [200, 200]


@pytest.mark.parametrize("filler", [0, 30], ids=["new-history-behind", "new-history-ahead"])
async def test_a_node_follows_etcd_replaced_by_a_new_history(
    gateway_factory: GatewayFactory, upstream_port: int, etcd_server: EtcdServer, tmp_path: Path, filler: int
) -> None:
    """etcd restored from an older backup, or rebuilt: its revisions restart, below the node's or (after
    `filler` writes) past them. Either way the node serves what etcd now holds, and says why."""
    node = gateway_factory(etcd_node(etcd_server, admin=True))
    upstream = {"scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}}
    await admin_put(node, "upstreams", "echo", upstream)
    for n in range(5):  # a few revisions for the new history to fall behind
        await admin_put(node, "routes", "old", {"uri": f"/{n}/*", "host": "old.test", "upstream_id": "echo"})
    await admin_put(node, "routes", "old", {"uri": "/*", "host": "old.test", "upstream_id": "echo"})
    await until_served([node], "old.test", timeout=2.0)
    new_route = {"id": "new", "uri": "/*", "host": "new.test", "upstream_id": "echo"}
    keys = {
        b"/protogate/upstreams/echo": json.dumps({"id": "echo", **upstream}).encode(),
        b"/protogate/routes/new": json.dumps(new_route).encode(),
    }
    await replace_history(etcd_server, tmp_path / "etcd-new", keys, filler=filler)
    await until_served([node], "new.test", timeout=10.0)
    assert await statuses([node], "old.test", 1) == [404]
    assert any("config store resynchronised" in line for line in node.process.output), "".join(node.process.output)
    await admin_put(node, "routes", "later", {"uri": "/*", "host": "later.test", "upstream_id": "echo"})
    await until_served([node], "later.test", timeout=2.0)
