"""api-breaker: config, APISIX's counting and doubling break time, and which answers count."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from traffic_support import config_issues, make_ctx

from gateway.plugins.api_breaker import ApiBreaker, ApiBreakerConfig, Breaker
from gateway.responses import ProxyResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "break_response_code"),
        ({"break_response_code": 199}, "break_response_code"),
        ({"break_response_code": 502, "max_breaker_sec": 2}, "max_breaker_sec"),
        ({"break_response_code": 502, "unhealthy": {"failures": 0}}, "unhealthy.failures"),
        ({"break_response_code": 502, "unhealthy": {"http_statuses": [100]}}, "unhealthy.http_statuses[0]"),
        ({"break_response_code": 502, "healthy": {"successes": 0}}, "healthy.successes"),
        ({"break_response_code": 502, "break_response_headers": [{"key": "X-A"}]}, "break_response_headers[0].value"),
        ({"break_response_code": 502, "break_response_headers": [{"key": "bad name", "value": "v"}]}, ""),
        ({"break_response_code": 502, "unknown": 1}, "unknown"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    issues = config_issues("api-breaker", config)
    where = "routes[0].plugins.api-breaker" + (f".{path}" if path else "")
    assert any(key.startswith(where) for key in issues), issues


def test_config_accepts_apisix_example() -> None:
    config = {
        "break_response_code": 502,
        "unhealthy": {"http_statuses": [500, 503], "failures": 3},
        "healthy": {"http_statuses": [200], "successes": 1},
    }
    assert config_issues("api-breaker", config) == {}


def breaker(clock: Clock, **fields: object) -> Breaker:
    return Breaker(ApiBreakerConfig.model_validate({"break_response_code": 502, **fields}), clock)


def test_opens_after_failures_for_two_seconds_then_lets_requests_through() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record(500)
    b.record(500)
    assert not b.is_open()
    b.record(500)
    assert b.is_open()
    clock.now += 2
    assert b.is_open()  # APISIX: open while lasttime + breaker_time >= now
    clock.now += 0.01
    assert not b.is_open()


def test_break_time_doubles_and_is_capped() -> None:
    clock = Clock()
    b = breaker(clock, unhealthy={"failures": 1}, max_breaker_sec=5)
    b.record(500)
    clock.now += 2.5
    assert not b.is_open()
    b.record(500)  # second window: 4 s
    clock.now += 3.9
    assert b.is_open()
    clock.now += 0.2
    assert not b.is_open()
    b.record(500)  # 8 s, capped at 5
    clock.now += 5.1
    assert not b.is_open()


def test_healthy_answers_in_a_row_close_it_and_clear_the_count() -> None:
    clock = Clock()
    b = breaker(clock, healthy={"successes": 2})
    for _ in range(3):
        b.record(500)
    clock.now += 3
    b.record(200)
    b.record(500)  # a failure in between starts the successes over
    b.record(200)
    assert b.unhealthy_count == 4
    b.record(200)
    assert b.unhealthy_count == 0 and not b.is_open()
    b.record(404)  # neither list: ignored
    assert b.unhealthy_count == 0


async def test_plugin_answers_with_the_break_response_while_open() -> None:
    plugin = ApiBreaker(
        ApiBreakerConfig.model_validate(
            {
                "break_response_code": 503,
                "break_response_body": "breaker open",
                "break_response_headers": [{"key": "X-Breaker", "value": "open"}],
                "unhealthy": {"failures": 2},
            }
        )
    )
    for _ in range(2):
        ctx = make_ctx()
        assert await plugin.access(ctx) is None
        assert await plugin.before_proxy(ctx) is None
        await plugin.log(ctx, ProxyResponse(500, CIMultiDict()))
    reply = await plugin.access(make_ctx())
    assert reply is not None
    assert (reply.status, reply.body, dict(reply.headers)) == (503, "breaker open", {"X-Breaker": "open"})


async def test_only_answers_from_the_upstream_count() -> None:
    plugin = ApiBreaker(ApiBreakerConfig.model_validate({"break_response_code": 503, "unhealthy": {"failures": 1}}))
    stopped = make_ctx()  # refused before the upstream (no before_proxy): never counts
    assert await plugin.access(stopped) is None
    await plugin.log(stopped, ProxyResponse(500, CIMultiDict()))
    proxied = make_ctx()
    assert await plugin.access(proxied) is None
    await plugin.before_proxy(proxied)
    await plugin.log(proxied, ProxyResponse(500, CIMultiDict(), source="plugin"))
    assert plugin.breaker.unhealthy_count == 0
    await plugin.log(proxied, ProxyResponse(500, CIMultiDict(), source="gateway"))  # a 500 of our own
    assert plugin.breaker.unhealthy_count == 0
    config = ApiBreakerConfig.model_validate({"break_response_code": 503, "unhealthy": {"http_statuses": [502]}})
    plugin = ApiBreaker(config)
    assert await plugin.access(proxied) is None
    await plugin.before_proxy(proxied)
    await plugin.log(proxied, ProxyResponse(502, CIMultiDict(), source="gateway"))  # could not reach it
    assert plugin.breaker.unhealthy_count == 1


async def test_one_breaker_per_route_covers_every_path() -> None:
    # APISIX keys its breaker by $host$uri; protogate keeps one per route, so a failing path opens it for all.
    plugin = ApiBreaker(ApiBreakerConfig.model_validate({"break_response_code": 503, "unhealthy": {"failures": 1}}))
    failing = make_ctx(path="/users/1")
    assert await plugin.access(failing) is None
    await plugin.before_proxy(failing)
    await plugin.log(failing, ProxyResponse(500, CIMultiDict()))
    assert await plugin.access(make_ctx(path="/users/2")) is not None


def test_break_time_is_two_to_the_floor_of_count_over_failures() -> None:
    # APISIX: 2^max(1, floor(count / failures)); a failure between two thresholds does not lengthen it.
    clock = Clock()
    b = breaker(clock, unhealthy={"failures": 3})
    for _ in range(3):
        b.record(500)
    clock.now += 3  # past the 2 s window
    assert not b.is_open()
    b.record(500)  # count 4: floor(4/3) = 1, still a 2 s window from the third failure
    assert not b.is_open()


async def test_break_response_header_values_may_use_variables() -> None:
    config = {
        "break_response_code": 503,
        "break_response_body": "open",
        "break_response_headers": [{"key": "X-Route", "value": "$route_id"}],
        "unhealthy": {"failures": 1},
    }
    plugin = ApiBreaker(ApiBreakerConfig.model_validate(config))
    ctx = make_ctx()
    await plugin.access(ctx)
    await plugin.before_proxy(ctx)
    await plugin.log(ctx, ProxyResponse(500, CIMultiDict()))
    reply = await plugin.access(make_ctx())
    assert reply is not None and dict(reply.headers) == {"X-Route": "r"}
