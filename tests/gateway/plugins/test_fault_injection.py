"""fault-injection: config refusals with their paths, then aborts and delays by percentage and vars."""

from __future__ import annotations

import time

import pytest
from transform_support import issues, loads, make_ctx

from gateway.plugins import fault_injection
from gateway.plugins.fault_injection import FaultInjection

AT = "routes[0].plugins.fault-injection"


def plugin(**config: object) -> FaultInjection:
    return FaultInjection(loads("fault-injection", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert "give abort, delay or both" in issues("fault-injection", {})[0]
    assert issues("fault-injection", {"abort": {}})[0].startswith(f"{AT}.abort.http_status: ")
    assert issues("fault-injection", {"abort": {"http_status": 100}})[0].startswith(f"{AT}.abort.http_status: ")
    found = issues("fault-injection", {"abort": {"http_status": 500, "percentage": 101}})
    assert found[0].startswith(f"{AT}.abort.percentage: ")
    assert issues("fault-injection", {"delay": {"duration": -1}})[0].startswith(f"{AT}.delay.duration: ")
    found = issues("fault-injection", {"abort": {"http_status": 500, "vars": [[["arg_x", "~", 1]]]}})
    assert found[0].startswith(f"{AT}.abort.vars: ") and "vars[0]" in found[0]
    assert issues("fault-injection", {"abort": {"http_status": 500, "headers": {"A B": "x"}}})[0].startswith(
        f"{AT}.abort.headers: "
    )


# 2. hooks


async def test_abort_always_with_body_and_headers_from_vars() -> None:
    abort = plugin(abort={"http_status": 503, "body": "down for $arg_who", "headers": {"X-Why": "$request_method"}})
    reply = await abort.rewrite(make_ctx("/a?who=ann"))
    assert reply is not None and reply.status == 503
    assert reply.body == "down for ann"
    assert dict(reply.headers) == {"X-Why": "GET"}


async def test_percentage_zero_never_hundred_always(monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(50):
        assert await plugin(abort={"http_status": 500, "percentage": 0}).rewrite(make_ctx()) is None
        assert await plugin(abort={"http_status": 500, "percentage": 100}).rewrite(make_ctx()) is not None
    monkeypatch.setattr(fault_injection.sampler, "randint", lambda a, b: 30)
    assert await plugin(abort={"http_status": 500, "percentage": 30}).rewrite(make_ctx()) is not None
    assert await plugin(abort={"http_status": 500, "percentage": 29}).rewrite(make_ctx()) is None


async def test_vars_are_an_or_of_ands() -> None:
    abort = plugin(
        abort={
            "http_status": 403,
            "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]], [["http_x_fault", "==", "yes"]]],
        }
    )
    assert await abort.rewrite(make_ctx("/?name=jack&age=20")) is not None
    assert await abort.rewrite(make_ctx("/?name=jack&age=10")) is None
    assert await abort.rewrite(make_ctx("/", headers=[("X-Fault", "yes")])) is not None
    assert await abort.rewrite(make_ctx("/")) is None


async def test_delay_then_go_on() -> None:
    delay = plugin(delay={"duration": 0.05})
    started = time.monotonic()
    assert await delay.rewrite(make_ctx()) is None
    assert time.monotonic() - started >= 0.045


async def test_delay_comes_before_abort() -> None:
    both = plugin(delay={"duration": 0.05, "vars": [[["arg_slow", "==", "1"]]]}, abort={"http_status": 500})
    started = time.monotonic()
    reply = await both.rewrite(make_ctx("/?slow=1"))
    assert reply is not None and reply.status == 500
    assert time.monotonic() - started >= 0.045
    started = time.monotonic()
    await both.rewrite(make_ctx("/"))
    assert time.monotonic() - started < 0.04


async def test_abort_header_values_may_be_numbers() -> None:
    reply = await plugin(abort={"http_status": 429, "headers": {"Retry-After": 5, "X-Ratio": 0.5}}).rewrite(make_ctx())
    assert reply is not None and dict(reply.headers) == {"Retry-After": "5", "X-Ratio": "0.5"}
