"""limit-count: config, fixed windows per key, quota headers, groups, bounded memory."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from traffic_support import config_issues, make_ctx

from gateway.errors import GatewayError
from gateway.plugins import limit_keys
from gateway.plugins.limit_count import LimitCount, LimitCountConfig, WindowCounter
from gateway.responses import ProxyResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"time_window": 1}, "count"),
        ({"count": 0, "time_window": 1}, "count"),
        ({"count": 1, "time_window": 0}, "time_window"),
        ({"count": 1, "time_window": 1, "rejected_code": 600}, "rejected_code"),
        ({"count": 1, "time_window": 1, "rejected_msg": ""}, "rejected_msg"),
        ({"count": 1, "time_window": 1, "key_type": "header"}, "key_type"),
        ({"count": 1, "time_window": 1, "policy": "memcached"}, "policy"),
        ({"count": 1, "time_window": 1, "policy": "redis"}, "redis_host"),
        ({"count": 1, "time_window": 1, "policy": "redis", "redis_host": "h", "redis_timeout": 0}, "redis_timeout"),
        ({"count": 1, "time_window": 1, "policy": "redis-cluster", "redis_cluster_name": "c"}, "redis_cluster_nodes"),
        ({"count": 1, "time_window": 1, "policy": "redis-cluster", "redis_cluster_nodes": []}, "redis_cluster_nodes"),
        (
            {"count": 1, "time_window": 1, "policy": "redis-cluster", "redis_cluster_nodes": ["h"]},
            "redis_cluster_nodes",
        ),
        (
            {"count": 1, "time_window": 1, "policy": "redis-cluster", "redis_cluster_nodes": ["h:1"]},
            "redis_cluster_name",
        ),
        ({"count": 1, "time_window": 1, "redis_hostname": "x"}, "redis_hostname"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    assert f"routes[0].plugins.limit-count.{path}" in config_issues("limit-count", config)


def test_config_accepts_apisix_example() -> None:
    assert (
        config_issues("limit-count", {"count": 2, "time_window": 60, "rejected_code": 429, "key": "remote_addr"}) == {}
    )


def test_config_accepts_apisix_redis_examples() -> None:
    redis = {
        "policy": "redis",
        "redis_host": "127.0.0.1",
        "redis_port": 6379,
        "redis_password": "pw",
        "redis_database": 1,
        "redis_timeout": 1001,
        "redis_ssl": True,
    }
    cluster = {
        "policy": "redis-cluster",
        "redis_cluster_nodes": ["127.0.0.1:5000", "[::1]:5001"],
        "redis_cluster_name": "redis-cluster-1",
        "redis_timeout": 500,
    }
    for fields in (redis, cluster):
        assert config_issues("limit-count", {"count": 2, "time_window": 60, **fields}) == {}
    # APISIX ignores redis fields under the local policy; so does a config copied from it.
    assert config_issues("limit-count", {"count": 2, "time_window": 60, "redis_host": "127.0.0.1"}) == {}


def make(clock: Clock, **fields: object) -> LimitCount:
    plugin = LimitCount(LimitCountConfig.model_validate({"count": 2, "time_window": 10, **fields}))
    plugin.counter.clock = clock
    return plugin


async def test_counts_per_key_then_refuses_with_headers() -> None:
    clock = Clock()
    plugin = make(clock, rejected_code=429)
    ctx = make_ctx()
    assert await plugin.access(ctx) is None
    response = ProxyResponse(200, CIMultiDict())
    await plugin.header_filter(ctx, response)
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "1"
    assert response.headers["X-RateLimit-Reset"] == "10"
    assert await plugin.access(make_ctx()) is None
    clock.now += 4
    with pytest.raises(GatewayError) as refused:
        await plugin.access(make_ctx())
    assert refused.value.status == 429
    assert refused.value.headers["X-RateLimit-Remaining"] == "0"
    assert refused.value.headers["Retry-After"] == "6"
    # another client has its own window
    assert await plugin.access(make_ctx(client_ip="192.0.2.8")) is None


async def test_window_resets_after_time_window() -> None:
    clock = Clock()
    plugin = make(clock)
    for _ in range(2):
        await plugin.access(make_ctx())
    clock.now += 10
    assert await plugin.access(make_ctx()) is None


async def test_quota_headers_can_be_hidden() -> None:
    plugin = make(Clock(), count=1, show_limit_quota_header=False)
    await plugin.access(make_ctx())
    with pytest.raises(GatewayError) as refused:
        await plugin.access(make_ctx())
    assert set(refused.value.headers) == {"Retry-After"}
    assert refused.value.status == 503


async def test_missing_key_var_is_counted_under_the_client_address() -> None:
    plugin = make(Clock(), key="http_x_api_key")
    await plugin.access(make_ctx(headers=[("X-Api-Key", "a")]))
    await plugin.access(make_ctx())
    await plugin.access(make_ctx())
    with pytest.raises(GatewayError):
        await plugin.access(make_ctx())  # leaving the header out does not escape the limit


def test_group_shares_one_counter_across_routes() -> None:
    config = LimitCountConfig(count=3, time_window=60, group="g")
    a, b = LimitCount(config), LimitCount(config)
    assert a.counter is b.counter
    assert LimitCount(LimitCountConfig(count=4, time_window=60, group="g")).counter is not a.counter
    assert LimitCount(LimitCountConfig(count=3, time_window=60)).counter is not a.counter


def test_expired_windows_are_swept_and_keys_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    counter = WindowCounter(1, 5, clock)
    for i in range(100):
        counter.take(f"k{i}")
    assert len(counter) == 100
    clock.now += 5
    counter.take("new")
    assert len(counter) == 1
    monkeypatch.setattr("gateway.plugins.limit_count.MAX_KEYS", 10)
    for i in range(50):
        counter.take(f"flood{i}")
    assert len(counter) == 10
    assert limit_keys.MAX_KEYS >= 10_000
