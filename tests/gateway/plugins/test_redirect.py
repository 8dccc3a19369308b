"""redirect: config refusals with their paths, then the Location and status of each kind of redirect."""

from __future__ import annotations

import pytest
from transform_support import issues, loads, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.redirect import Redirect

AT = "routes[0].plugins.redirect"


def plugin(**config: object) -> Redirect:
    return Redirect(loads("redirect", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert "exactly one of" in issues("redirect", {})[0]
    assert "exactly one of" in issues("redirect", {"uri": "/a", "http_to_https": True})[0]
    found = issues("redirect", {"http_to_https": True, "append_query_string": True})
    assert found[0].startswith(f"{AT}: ") and "append_query_string" in found[0]
    assert issues("redirect", {"uri": "/a", "ret_code": 100})[0].startswith(f"{AT}.ret_code: ")
    assert issues("redirect", {"regex_uri": ["^/(a"]})[0].startswith(f"{AT}.regex_uri: ")
    assert issues("redirect", {"regex_uri": ["^/(a", "/b"]})[0].startswith(f"{AT}.regex_uri: ")
    assert "unknown variable" in issues("redirect", {"uri": "/x/$nope"})[0]


# 2. hooks


async def test_http_to_https_keeps_host_and_target_301_for_get_308_otherwise() -> None:
    to_https = plugin(http_to_https=True)
    reply = await to_https.rewrite(make_ctx("/a/b?x=1", headers=[("Host", "Shop.Example:8080")]))
    assert reply is not None and reply.status == 301
    assert reply.headers["Location"] == "https://shop.example/a/b?x=1"
    post = await to_https.rewrite(make_ctx("/a", method="POST", headers=[("Host", "shop.example")]))
    assert post is not None and post.status == 308
    assert await to_https.rewrite(make_ctx("/a", headers=[("Host", "shop.example")], scheme="https")) is None


async def test_uri_with_variables_and_appended_query() -> None:
    redirect = plugin(uri="/new$uri?from=$arg_ref", ret_code=307, append_query_string=True)
    reply = await redirect.rewrite(make_ctx("/old?ref=mail&x=1"))
    assert reply is not None and reply.status == 307
    assert reply.headers["Location"] == "/new/old?from=mail&ref=mail&x=1"


async def test_regex_uri_redirects_only_on_match() -> None:
    redirect = plugin(regex_uri=["^/blog/(\\d+)$", "https://blog.example/posts/$1"])
    reply = await redirect.rewrite(make_ctx("/blog/42"))
    assert reply is not None and reply.status == 302
    assert reply.headers["Location"] == "https://blog.example/posts/42"
    assert await redirect.rewrite(make_ctx("/other")) is None


async def test_encode_uri() -> None:
    reply = await plugin(uri="/to/$http_x_name", encode_uri=True).rewrite(make_ctx(headers=[("X-Name", "a b\u00e9")]))
    assert reply is not None and reply.headers["Location"] == "/to/a%20b%C3%A9"


async def test_a_control_character_never_reaches_location() -> None:
    with pytest.raises(GatewayError) as caught:
        await plugin(uri="/to/$cookie_c").rewrite(make_ctx(headers=[("Cookie", 'c="a\\015\\012b"')]))
    assert caught.value.status == 400


async def test_http_to_https_trusts_x_forwarded_proto_as_apisix_does() -> None:
    # Behind a proxy that ends TLS, the request was HTTPS already: redirecting it again would loop.
    to_https = plugin(http_to_https=True)
    assert await to_https.rewrite(make_ctx("/a", headers=[("Host", "h"), ("X-Forwarded-Proto", "https")])) is None
    reply = await to_https.rewrite(make_ctx("/a", headers=[("Host", "h"), ("X-Forwarded-Proto", "http")]))
    assert reply is not None and reply.headers["Location"] == "https://h/a"
