"""limit-conn: config, in-flight counting released in the log phase, delays within burst, refusals past it."""

from __future__ import annotations

import asyncio
import gc

import pytest
from multidict import CIMultiDict
from traffic_support import config_issues, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.limit_conn import LimitConn, LimitConnConfig
from gateway.responses import ProxyResponse

BASE = {"conn": 1, "burst": 1, "default_conn_delay": 0.05}


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"burst": 0, "default_conn_delay": 1}, "conn"),
        ({**BASE, "conn": 0}, "conn"),
        ({**BASE, "burst": -1}, "burst"),
        ({"conn": 1, "burst": 0}, "default_conn_delay"),
        ({**BASE, "default_conn_delay": 0}, "default_conn_delay"),
        ({**BASE, "key_type": "var", "key": "bogus"}, ""),
        ({**BASE, "policy": "memcached"}, "policy"),
        ({**BASE, "policy": "redis"}, "redis_host"),
        ({**BASE, "policy": "redis", "redis_host": "h", "key_ttl": 0}, "key_ttl"),
        ({**BASE, "policy": "redis-cluster", "redis_cluster_name": "c"}, "redis_cluster_nodes"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    where = "routes[0].plugins.limit-conn" + (f".{path}" if path else "")
    assert where in config_issues("limit-conn", config)


def response() -> ProxyResponse:
    return ProxyResponse(200, CIMultiDict())


async def test_conn_then_burst_delayed_then_refused_and_released_in_log() -> None:
    plugin = LimitConn(LimitConnConfig(**BASE, only_use_default_delay=True, rejected_code=429))
    first, second, third = make_ctx(), make_ctx(), make_ctx()
    await plugin.access(first)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await plugin.access(second)  # over conn, within burst: waits default_conn_delay
    assert loop.time() - started >= 0.045
    with pytest.raises(GatewayError) as refused:
        await plugin.access(third)
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "1"
    await plugin.log(third, response())  # refused: nothing was taken, nothing is released
    assert plugin.in_flight == {"192.0.2.7": 2}
    await plugin.log(first, response())
    await plugin.log(second, response())
    assert plugin.in_flight == {}
    await plugin.log(second, response())  # a second log never releases twice
    assert plugin.in_flight == {}


async def test_request_refused_before_access_is_not_released() -> None:
    plugin = LimitConn(LimitConnConfig(**BASE))
    held = make_ctx()
    await plugin.access(held)
    await plugin.log(make_ctx(), response())  # e.g. stopped by ip-restriction, limit-conn never ran
    assert plugin.in_flight == {"192.0.2.7": 1}


async def test_keys_are_independent_and_missing_var_falls_back() -> None:
    plugin = LimitConn(LimitConnConfig(conn=1, burst=0, default_conn_delay=1, key="http_x_user"))
    held = [make_ctx(headers=[("X-User", "a")]), make_ctx(headers=[("X-User", "b")]), make_ctx()]
    for ctx in held:  # kept referenced: a freed context gives its slot back
        await plugin.access(ctx)
    with pytest.raises(GatewayError):
        await plugin.access(make_ctx())
    assert plugin.in_flight == {"a": 1, "b": 1, "192.0.2.7": 1}


async def test_delay_grows_with_multiples_of_conn_like_apisix() -> None:
    plugin = LimitConn(LimitConnConfig(conn=2, burst=4, default_conn_delay=0.001, only_use_default_delay=True))
    contexts = [make_ctx() for _ in range(6)]
    for ctx in contexts:
        await plugin.access(ctx)
    delays = [ctx.vars["limit-conn"][0].delay for ctx in contexts]
    assert delays == pytest.approx([0, 0, 0.001, 0.001, 0.002, 0.002])


async def test_unit_delay_learns_latency_unless_only_default() -> None:
    learning = LimitConn(LimitConnConfig(conn=1, burst=0, default_conn_delay=1))
    ctx = make_ctx()
    await learning.access(ctx)
    await learning.log(ctx, response())
    assert learning.unit_delay < 0.6  # (latency ~0 + 1) / 2
    fixed = LimitConn(LimitConnConfig(conn=1, burst=0, default_conn_delay=1, only_use_default_delay=True))
    ctx = make_ctx()
    await fixed.access(ctx)
    await fixed.log(ctx, response())
    assert fixed.unit_delay == 1


async def test_a_request_that_never_reaches_the_log_phase_does_not_leak_its_slot() -> None:
    plugin = LimitConn(LimitConnConfig(conn=1, burst=0, default_conn_delay=1))
    ctx = make_ctx()
    await plugin.access(ctx)
    del ctx  # e.g. sending the answer failed and the log phase never ran
    gc.collect()
    assert await plugin.access(make_ctx()) is None
    assert plugin.in_flight == {"192.0.2.7": 1}
