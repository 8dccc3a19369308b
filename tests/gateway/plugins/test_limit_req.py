"""limit-req: config, the leaky bucket (delay within burst, refuse past it), nodelay, bounded memory."""

from __future__ import annotations

import asyncio

import pytest
from traffic_support import config_issues, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.limit_req import LeakyBucket, LimitReq, LimitReqConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"burst": 1}, "rate"),
        ({"rate": 0, "burst": 1}, "rate"),
        ({"rate": 1}, "burst"),
        ({"rate": 1, "burst": -1}, "burst"),
        ({"rate": 1, "burst": 0, "nodelay": "sometimes"}, "nodelay"),
        ({"rate": 1, "burst": 0, "rejected_code": 199}, "rejected_code"),
        ({"rate": 1, "burst": 0, "policy": "memcached"}, "policy"),
        ({"rate": 1, "burst": 0, "policy": "redis"}, "redis_host"),
        ({"rate": 1, "burst": 0, "policy": "redis", "redis_host": "h", "redis_timeout": 0}, "redis_timeout"),
        ({"rate": 1, "burst": 0, "policy": "redis-cluster", "redis_cluster_nodes": ["h:1"]}, "redis_cluster_name"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    assert f"routes[0].plugins.limit-req.{path}" in config_issues("limit-req", config)


def test_bucket_follows_nginx_arithmetic() -> None:
    clock = Clock()
    bucket = LeakyBucket(rate=2, burst=1, clock=clock)
    assert bucket.take("a") == (True, 0.0)
    assert bucket.take("a") == (True, 0.5)  # one ahead of it: wait 1/rate
    allowed, retry = bucket.take("a")
    assert not allowed and retry == pytest.approx(0.5)
    clock.now += 0.5  # one request's worth drained
    assert bucket.take("a") == (True, 0.5)
    assert bucket.take("b") == (True, 0.0)


def test_burst_zero_refuses_the_second_immediate_request() -> None:
    clock = Clock()
    bucket = LeakyBucket(rate=1, burst=0, clock=clock)
    assert bucket.take("a")[0]
    assert not bucket.take("a")[0]
    clock.now += 1
    assert bucket.take("a")[0]


def test_drained_buckets_are_forgotten_and_keys_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    bucket = LeakyBucket(rate=10, burst=5, clock=clock)
    for i in range(100):
        bucket.take(f"k{i}")
    assert len(bucket) == 100
    clock.now += 0.1  # each held one request, drained after 1/rate
    bucket.take("new")
    assert len(bucket) == 1
    monkeypatch.setattr("gateway.plugins.limit_req.MAX_KEYS", 10)
    for i in range(50):
        bucket.take(f"flood{i}")
    assert len(bucket) == 10


async def test_burst_requests_are_delayed_unless_nodelay() -> None:
    plugin = LimitReq(LimitReqConfig(rate=20, burst=1))
    assert await plugin.access(make_ctx()) is None
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await plugin.access(make_ctx()) is None
    assert loop.time() - started >= 0.04  # 1/rate = 0.05 s, less the time already elapsed

    fast = LimitReq(LimitReqConfig(rate=20, burst=1, nodelay=True))
    await fast.access(make_ctx())
    started = loop.time()
    await fast.access(make_ctx())
    assert loop.time() - started < 0.03


async def test_over_burst_is_refused_with_retry_after_and_config_status() -> None:
    plugin = LimitReq(LimitReqConfig(rate=1, burst=0, rejected_code=429, rejected_msg="slow down"))
    await plugin.access(make_ctx())
    with pytest.raises(GatewayError) as refused:
        await plugin.access(make_ctx())
    assert (refused.value.status, refused.value.message) == (429, "slow down")
    assert refused.value.headers["Retry-After"] == "1"
    assert await plugin.access(make_ctx(client_ip="192.0.2.99")) is None


async def test_missing_key_var_falls_back_to_client_address() -> None:
    plugin = LimitReq(LimitReqConfig(rate=1, burst=0, key="consumer_name"))
    await plugin.access(make_ctx())
    with pytest.raises(GatewayError):
        await plugin.access(make_ctx())
