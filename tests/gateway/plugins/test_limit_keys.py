"""The key the limiters count by: variable names checked at load, resolution and the remote_addr fallback."""

from __future__ import annotations

import pytest
from traffic_support import config_issues, make_ctx

from gateway.consumers import Consumer
from gateway.plugins.limit_keys import LimitConfig, LimitKey, refusal


@pytest.mark.parametrize(
    ("key_type", "key"),
    [
        ("var", "nope"),
        ("var", "http_"),
        ("var", "$remote_addr"),
        ("var_combination", "plain"),
        ("var_combination", "$a $remote_addr"),
    ],
)
def test_unknown_variables_are_refused_at_load(key_type: str, key: str) -> None:
    issues = config_issues("limit-count", {"count": 1, "time_window": 1, "key_type": key_type, "key": key})
    assert list(issues) == ["routes[0].plugins.limit-count"]


@pytest.mark.parametrize("plugin", ["limit-req", "limit-conn"])
@pytest.mark.parametrize(("policy", "needs"), [("redis", "redis_host"), ("redis-cluster", "redis_cluster_nodes")])
def test_every_limiter_takes_the_redis_policies_with_their_fields(plugin: str, policy: str, needs: str) -> None:
    config = {"rate": 1, "burst": 0} if plugin == "limit-req" else {"conn": 1, "burst": 0, "default_conn_delay": 0.1}
    issues = config_issues(plugin, {**config, "policy": policy})
    assert f"routes[0].plugins.{plugin}.{needs}" in issues


def test_defaults_follow_apisix() -> None:
    config = LimitConfig()
    assert (config.key_type, config.key, config.rejected_code, config.policy) == ("var", "remote_addr", 503, "local")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("remote_addr", "192.0.2.7"),
        ("consumer_name", "alice"),
        ("route_id", "r"),
        ("http_x_api_key", "k1"),  # any letter case of the header
        ("arg_user", "u1"),
        ("uri", "/echo"),
    ],
)
def test_var_resolves_apisix_variables(key: str, expected: str) -> None:
    ctx = make_ctx(headers=[("X-API-Key", "k1")], query="user=u1", consumer=Consumer("alice"))
    assert LimitKey("var", key)(ctx) == expected


@pytest.mark.parametrize("key", ["http_x_api_key", "consumer_name", "arg_user", "cookie_session"])
def test_missing_variable_falls_back_to_the_client_address(key: str) -> None:
    assert LimitKey("var", key)(make_ctx(client_ip="198.51.100.1")) == "198.51.100.1"


def test_empty_header_falls_back_too() -> None:
    assert LimitKey("var", "http_x_api_key")(make_ctx(headers=[("X-Api-Key", "")])) == "192.0.2.7"


def test_var_combination_substitutes_and_falls_back_only_when_nothing_resolved() -> None:
    ctx = make_ctx(headers=[("X-Tenant", "t1")])
    assert LimitKey("var_combination", "$http_x_tenant:${remote_addr}")(ctx) == "t1:192.0.2.7"
    assert LimitKey("var_combination", "$http_x_tenant-$consumer_name")(ctx) == "t1-"
    assert LimitKey("var_combination", "$http_x_other $consumer_name")(ctx) == "192.0.2.7"


def test_constant_key_is_one_bucket_for_everyone() -> None:
    assert LimitKey("constant", "all")(make_ctx()) == "all"


def test_refusal_has_status_message_and_whole_seconds_retry_after() -> None:
    err = refusal(LimitConfig(rejected_code=429, rejected_msg="slow down"), "default", 0.2, {"X-A": "1"})
    assert (err.status, err.message, err.headers) == (429, "slow down", {"X-A": "1", "Retry-After": "1"})
    assert refusal(LimitConfig(), "default", 2.5).headers["Retry-After"] == "3"
    assert refusal(LimitConfig(), "default", 0).message == "default"
