"""proxy-rewrite: config refusals with their paths, then the rewrite hook on hand-built requests."""

from __future__ import annotations

import pytest
from transform_support import issues, loads, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.proxy_rewrite import ProxyRewrite

AT = "routes[0].plugins.proxy-rewrite"


def plugin(**config: object) -> ProxyRewrite:
    return ProxyRewrite(loads("proxy-rewrite", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    found = issues("proxy-rewrite", {"regex_uri": ["^/(a", "/$1"]})
    assert len(found) == 1 and found[0].startswith(f"{AT}.regex_uri: ") and "not a valid regex" in found[0]
    assert issues("proxy-rewrite", {"regex_uri": ["^/a", "/b", "^/c"]})[0].startswith(f"{AT}.regex_uri")
    assert issues("proxy-rewrite", {"uri": "no-slash"})[0].startswith(f"{AT}.uri: ")
    assert "unknown variable" in issues("proxy-rewrite", {"uri": "/x/$nope"})[0]
    assert issues("proxy-rewrite", {"method": "FETCH"})[0].startswith(f"{AT}.method: ")
    assert issues("proxy-rewrite", {"host": "a b"})[0].startswith(f"{AT}.host: ")
    assert issues("proxy-rewrite", {"headers": {"set": {"Bad Name": "x"}}})[0].startswith(f"{AT}.headers")
    assert issues("proxy-rewrite", {"headers": {"set": {"X-A": "a\r\nb"}}})[0].startswith(f"{AT}.headers")
    assert issues("proxy-rewrite", {"use_real_request_uri_unsafe": True})[0].startswith(f"{AT}.use_real")
    assert loads("proxy-rewrite", {"uri": "/x", "use_real_request_uri_unsafe": False}).uri == "/x"
    # APISIX's minProperties: an empty proxy-rewrite is refused.
    assert "at least one" in issues("proxy-rewrite", {})[0]
    # `$1` is a regex_uri group in header values only, never in the uri template.
    assert "unknown variable" in issues("proxy-rewrite", {"uri": "/x/$1"})[0]


def test_flat_headers_form_is_set_and_empty_value_removes() -> None:
    config = loads("proxy-rewrite", {"headers": {"X-Api-Version": "v2", "X-Num": 3, "X-Drop": ""}})
    assert config.headers.set == {"X-Api-Version": "v2", "X-Num": "3"}
    assert config.headers.remove == ["X-Drop"]


# 2. hooks


async def test_uri_with_variables_and_query_merges_with_the_clients() -> None:
    ctx = make_ctx("/old/path?page=2&user=ann", headers=[("X-Tenant", "t1")])
    await plugin(uri="/$http_x_tenant/users/${arg_user}?src=gw").rewrite(ctx)
    assert ctx.path == "/t1/users/ann"
    assert ctx.query == "src=gw&page=2&user=ann"


async def test_uri_without_query_keeps_the_clients_query() -> None:
    ctx = make_ctx("/a?x=1")
    await plugin(uri="/b$uri").rewrite(ctx)
    assert (ctx.path, ctx.query) == ("/b/a", "x=1")


async def test_variable_values_cannot_start_a_query_or_climb_out() -> None:
    ctx = make_ctx("/a?name=x%3Fy&sp=a b")
    ctx.headers["X-V"] = "p?q=1#f"
    await plugin(uri="/api/$http_x_v/$arg_name").rewrite(ctx)
    assert ctx.path == "/api/p%3Fq=1%23f/x%3Fy"
    assert ctx.query == "name=x%3Fy&sp=a b"
    with pytest.raises(GatewayError) as caught:
        await plugin(uri="/api/$arg_name").rewrite(make_ctx("/a?name=.."))
    assert caught.value.status == 400
    with pytest.raises(GatewayError):
        await plugin(uri="/api/$arg_name/x").rewrite(make_ctx("/a?name=%2e%2E"))


async def test_result_is_normalised() -> None:
    ctx = make_ctx("/a")
    await plugin(uri="/x//y/%7Ez").rewrite(ctx)
    assert ctx.path == "/x/y/~z"


async def test_regex_uri_first_matching_pair_wins_with_groups() -> None:
    rewrite = plugin(regex_uri=["^/nomatch/(.*)", "/no/$1", "^/api/v(\\d+)/(.*)", "/v${1}/svc/$2", "^/(.*)", "/x/$1"])
    ctx = make_ctx("/api/v2/books/7")
    await rewrite.rewrite(ctx)
    assert ctx.path == "/v2/svc/books/7"
    untouched = make_ctx("/other")
    await plugin(regex_uri=["^/api/(.*)", "/$1"]).rewrite(untouched)
    assert untouched.path == "/other"


async def test_regex_uri_with_query_in_replacement() -> None:
    ctx = make_ctx("/search/python?page=3")
    await plugin(regex_uri=["^/search/(\\w+)$", "/find?q=$1&price=$$5"]).rewrite(ctx)
    assert (ctx.path, ctx.query) == ("/find", "q=python&price=$5&page=3")


async def test_uri_wins_over_regex_uri() -> None:
    ctx = make_ctx("/a")
    await plugin(uri="/fixed", regex_uri=["^/(.*)", "/re/$1"]).rewrite(ctx)
    assert ctx.path == "/fixed"


async def test_method_host_and_headers_add_set_remove() -> None:
    ctx = make_ctx("/a?id=42", headers=[("X-Old", "1"), ("X-Keep", "k"), ("X-Multi", "a")])
    config = {
        "method": "POST",
        "host": "internal.svc:8080",
        "headers": {
            "add": {"X-Multi": "b"},
            "set": {"X-Id": "$arg_id", "X-Keep": "replaced", "X-Method": "$request_method"},
            "remove": ["X-Old"],
        },
    }
    await plugin(**config).rewrite(ctx)
    assert ctx.method == "POST"
    assert ctx.headers["Host"] == "internal.svc:8080"
    assert ctx.headers.getall("X-Multi") == ["a", "b"]
    assert ctx.headers["X-Id"] == "42"
    assert ctx.headers["X-Keep"] == "replaced"
    assert ctx.headers["X-Method"] == "GET"  # the method changes last, as in APISIX
    assert "X-Old" not in ctx.headers


async def test_headers_asserted_as_metadata_follow_the_rewrite() -> None:
    ctx = make_ctx("/a")
    ctx.set_upstream_header("X-Request-Id", "abc")
    ctx.set_upstream_header("X-Trace", "t")
    await plugin(headers={"set": {"X-Request-Id": "def"}, "remove": ["X-Trace"]}).rewrite(ctx)
    assert ctx.upstream_metadata == [("x-request-id", "def")]
    assert "X-Trace" not in ctx.headers


async def test_control_characters_from_a_cookie_never_reach_a_header() -> None:
    ctx = make_ctx("/a", headers=[("Cookie", 'c="a\\012b"')])
    with pytest.raises(GatewayError) as caught:
        await plugin(headers={"X-C": "$cookie_c"}).rewrite(ctx)
    assert caught.value.status == 400


async def test_set_and_added_headers_go_to_grpc_upstreams_as_metadata_but_hop_headers_do_not() -> None:
    ctx = make_ctx("/a")
    config = {"headers": {"set": {"X-Tenant": "acme", "Content-Type": "text/plain"}, "add": {"X-Tag": "a"}}}
    await plugin(**config).rewrite(ctx)
    assert ctx.upstream_metadata == [("x-tag", "a"), ("x-tenant", "acme")]  # add runs before set
    assert ctx.headers["Content-Type"] == "text/plain"


async def test_header_values_read_the_regex_uri_groups() -> None:
    ctx = make_ctx("/user/42/orders")
    config = {
        "regex_uri": ["^/user/(\\d+)/(.*)", "/v2/$2"],
        "headers": {"set": {"X-User-Id": "$1", "X-Both": "${1}:${2}", "X-None": "$9"}},
    }
    await plugin(**config).rewrite(ctx)
    assert ctx.path == "/v2/orders"
    assert (ctx.headers["X-User-Id"], ctx.headers["X-Both"], ctx.headers["X-None"]) == ("42", "42:orders", "")


async def test_header_values_may_be_lists_and_variables_may_have_defaults() -> None:
    ctx = make_ctx("/a", headers=[("X-Tag", "old")])
    config = {
        "headers": {"add": {"X-Multi": ["a", "b"]}, "set": {"X-Tag": ["t1", 2], "X-Who": "${http_x_user ?? anon}"}}
    }
    await plugin(**config).rewrite(ctx)
    assert ctx.headers.getall("X-Multi") == ["a", "b"]
    assert ctx.headers.getall("X-Tag") == ["t1", "2"]
    assert ctx.headers["X-Who"] == "anon"
