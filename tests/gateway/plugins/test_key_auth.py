"""key-auth: config, then the rewrite hook on hand-built requests (messages, realm, anonymous, hiding)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.key_auth import KeyAuth, KeyAuthConfig

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}


def document(plugin: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {"key-auth": plugin or {}}}],
        "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}},
            {"username": "anonymous"},
        ],
    }


CONSUMERS = load_document(document()).consumers


def make_ctx(headers: Iterable[tuple[str, str]] = (), query: str = "") -> RequestContext:
    header_map = CIMultiDict(headers)
    request = make_mocked_request("GET", "/echo" + (f"?{query}" if query else ""), headers=header_map)
    return RequestContext(
        request=request,
        route_id="r",
        method="GET",
        path="/echo",
        query=query,
        headers=CIMultiDict(header_map),
        client_ip="127.0.0.1",
        consumers=CONSUMERS,
        body_limit=1024,
    )


async def refused(plugin: KeyAuth, ctx: RequestContext) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await plugin.rewrite(ctx)
    assert caught.value.status == 401
    assert ctx.consumer is None
    return caught.value


# 1. config


def test_config_defaults_and_refusals() -> None:
    config = KeyAuthConfig()
    assert (config.header, config.query, config.hide_credentials, config.realm) == ("apikey", "apikey", False, "key")
    with pytest.raises(ConfigError) as caught:
        load_document(document({"realm": 'say "hi"', "anonymous_consumer": ""}))
    paths = sorted(issue.split(":")[0] for issue in map(str, caught.value.issues))
    assert paths == ["routes[0].plugins.key-auth.anonymous_consumer", "routes[0].plugins.key-auth.realm"]


# 2. hooks


async def test_header_then_query_identify_the_consumer() -> None:
    plugin = KeyAuth(KeyAuthConfig())
    for ctx in (make_ctx([("apikey", "jack-key")]), make_ctx(query="apikey=jack-key")):
        assert await plugin.rewrite(ctx) is None
        assert ctx.consumer is not None and ctx.consumer.username == "jack"


async def test_refusals_carry_apisix_s_messages_and_apikey_challenge() -> None:
    plugin = KeyAuth(KeyAuthConfig(realm="shop"))
    missing = await refused(plugin, make_ctx())
    assert missing.message == "Missing API key in request"
    assert missing.headers["WWW-Authenticate"] == 'apikey realm="shop"'
    # A key that is there but empty is an invalid key, as in APISIX (whose header read gives "").
    for ctx in (make_ctx([("apikey", "nope")]), make_ctx([("apikey", "")]), make_ctx(query="apikey=")):
        assert (await refused(plugin, ctx)).message == "Invalid API key in request"


async def test_anonymous_consumer_stands_in_for_missing_and_wrong_keys_and_hides_them() -> None:
    plugin = KeyAuth(KeyAuthConfig(anonymous_consumer="anonymous", hide_credentials=True))
    for ctx in (make_ctx(), make_ctx([("apikey", "wrong")], query="apikey=wrong&a=1")):
        assert await plugin.rewrite(ctx) is None
        assert ctx.consumer is not None and ctx.consumer.username == "anonymous"
        assert "apikey" not in ctx.headers and "apikey" not in ctx.query
    ctx = make_ctx([("apikey", "jack-key")])
    await plugin.rewrite(ctx)
    assert ctx.consumer is not None and ctx.consumer.username == "jack"


async def test_an_anonymous_consumer_that_does_not_exist_is_apisix_s_invalid_user() -> None:
    err = await refused(KeyAuth(KeyAuthConfig(anonymous_consumer="ghost")), make_ctx())
    assert (err.message, err.headers["WWW-Authenticate"]) == ("Invalid user authorization", 'apikey realm="key"')


async def test_hide_credentials_removes_the_key_from_both_places() -> None:
    ctx = make_ctx([("apikey", "jack-key")], query="apikey=jack-key&page=2")
    await KeyAuth(KeyAuthConfig(hide_credentials=True)).rewrite(ctx)
    assert "apikey" not in ctx.headers and ctx.query == "page=2"
