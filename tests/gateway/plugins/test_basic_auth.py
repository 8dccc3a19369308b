"""basic-auth: credential and route config validation, then the rewrite hook on hand-built requests."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.consumers import EMPTY_CONSUMERS, ConsumerIndex
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins import basic_auth
from gateway.plugins.basic_auth import BasicAuth, BasicAuthConfig

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}
CHALLENGE = 'Basic realm="basic"'


def document(plugin: dict[str, Any] | None = None, consumers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {"basic-auth": plugin or {}}}],
        "consumers": list(consumers),
    }


def consumer(username: str, user: str, password: str, **extra: Any) -> dict[str, Any]:
    return {"username": username, "plugins": {"basic-auth": {"username": user, "password": password}}, **extra}


def issues(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(doc)
    return [str(issue) for issue in caught.value.issues]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CONSUMERS = load_document(
    document(
        consumers=[
            consumer("jack", "jack2019", "s3cret"),
            consumer("colon", "colon-user", "pass:with:colons"),
            {"username": "anonymous"},
        ]
    )
).consumers


def make_ctx(headers: Iterable[tuple[str, str]] = (), consumers: ConsumerIndex = CONSUMERS) -> RequestContext:
    header_map = CIMultiDict(headers)
    request = make_mocked_request("GET", "/echo", headers=header_map)
    return RequestContext(
        request=request,
        route_id="r",
        method="GET",
        path="/echo",
        query="",
        headers=CIMultiDict(header_map),
        client_ip="127.0.0.1",
        consumers=consumers,
        body_limit=1024,
    )


async def refused(plugin: BasicAuth, ctx: RequestContext) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await plugin.rewrite(ctx)
    err = caught.value
    assert err.status == 401
    assert err.headers["WWW-Authenticate"] == CHALLENGE
    assert ctx.consumer is None
    return err


# 1. config


def test_route_config_refuses_unknown_fields_and_wrong_types() -> None:
    found = issues(document({"hide_credentials": "maybe", "realm": 'a"b'}))
    assert any(i.startswith("routes[0].plugins.basic-auth.hide_credentials:") for i in found)
    assert any(i.startswith("routes[0].plugins.basic-auth.realm:") for i in found)


def test_consumer_credential_needs_username_and_password() -> None:
    found = issues(document(consumers=[{"username": "jack", "plugins": {"basic-auth": {"username": "jack"}}}]))
    assert [i.split(":")[0] for i in found] == ["consumers[0].plugins.basic-auth.password"]
    found = issues(document(consumers=[consumer("jack", "", "x")]))
    assert found[0].startswith("consumers[0].plugins.basic-auth.username:")


def test_a_username_with_a_colon_is_refused() -> None:
    # RFC 7617: `a:b` as a user-id could never be presented, the first colon ends it.
    found = issues(document(consumers=[consumer("jack", "ja:ck", "x")]))
    assert found[0].startswith("consumers[0].plugins.basic-auth.username:")


def test_two_consumers_cannot_share_a_username() -> None:
    found = issues(document(consumers=[consumer("a", "same", "x"), consumer("b", "same", "y")]))
    assert found == ["consumers[1].plugins.basic-auth: the same credential as 'a'"]


def test_defaults_match_apisix() -> None:
    config = BasicAuthConfig()
    assert config.hide_credentials is False
    assert config.anonymous_consumer is None
    assert config.realm == "basic"
    assert BasicAuth.priority == 2520


async def test_realm_names_the_challenge() -> None:
    plugin = BasicAuth(BasicAuthConfig(realm="staff area"))
    with pytest.raises(GatewayError) as caught:
        await plugin.rewrite(make_ctx())
    assert caught.value.headers["WWW-Authenticate"] == 'Basic realm="staff area"'


# 2. hooks


async def test_valid_credentials_identify_the_consumer_and_keep_the_header() -> None:
    ctx = make_ctx([("Authorization", basic("jack2019", "s3cret"))])
    assert await BasicAuth(BasicAuthConfig()).rewrite(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.username == "jack"
    assert ctx.headers["Authorization"] == basic("jack2019", "s3cret")


async def test_scheme_is_case_insensitive_and_a_password_may_hold_colons() -> None:
    ctx = make_ctx([("Authorization", basic("colon-user", "pass:with:colons").replace("Basic", "bAsIc"))])
    await BasicAuth(BasicAuthConfig()).rewrite(ctx)
    assert ctx.consumer is not None and ctx.consumer.username == "colon"


async def test_hide_credentials_removes_the_authorization_header() -> None:
    ctx = make_ctx([("Authorization", basic("jack2019", "s3cret")), ("X-Other", "kept")])
    await BasicAuth(BasicAuthConfig(hide_credentials=True)).rewrite(ctx)
    assert "Authorization" not in ctx.headers
    assert ctx.headers["X-Other"] == "kept"


async def test_missing_credentials_get_401_with_a_basic_challenge() -> None:
    err = await refused(BasicAuth(BasicAuthConfig()), make_ctx())
    assert err.message == "Missing authorization in request"


async def test_unknown_user_and_wrong_password_get_the_same_answer() -> None:
    plugin = BasicAuth(BasicAuthConfig())
    wrong_password = await refused(plugin, make_ctx([("Authorization", basic("jack2019", "nope"))]))
    unknown_user = await refused(plugin, make_ctx([("Authorization", basic("nobody", "s3cret"))]))
    assert wrong_password.message == unknown_user.message == "Invalid user authorization"
    assert (wrong_password.status, wrong_password.code) == (unknown_user.status, unknown_user.code)


async def test_passwords_are_compared_in_constant_time_even_for_unknown_users(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = basic_auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(basic_auth.hmac, "compare_digest", spy)
    plugin = BasicAuth(BasicAuthConfig())
    await plugin.rewrite(make_ctx([("Authorization", basic("jack2019", "s3cret"))]))
    await refused(plugin, make_ctx([("Authorization", basic("nobody", "guess"))]))
    assert [given for given, _ in calls] == [b"s3cret", b"guess"]


@pytest.mark.parametrize(
    "value",
    [
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":password-without-user").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),  # not UTF-8
        "Basic " + base64.b64encode(b"jack2019:s3cret").decode()[:-2],  # padding cut
        "Bearer abc.def.ghi",
        "jack2019:s3cret",
        "",
    ],
)
async def test_malformed_authorization_is_401_not_500(value: str) -> None:
    err = await refused(BasicAuth(BasicAuthConfig()), make_ctx([("Authorization", value)]))
    assert err.message == "Invalid authorization in request"


async def test_two_authorization_headers_are_refused() -> None:
    good = basic("jack2019", "s3cret")
    err = await refused(BasicAuth(BasicAuthConfig()), make_ctx([("Authorization", good), ("Authorization", good)]))
    assert err.message == "Invalid authorization in request"


async def test_anonymous_consumer_stands_in_for_missing_and_failed_credentials() -> None:
    plugin = BasicAuth(BasicAuthConfig(anonymous_consumer="anonymous", hide_credentials=True))
    ctx = make_ctx()
    assert await plugin.rewrite(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.username == "anonymous"
    # APISIX: wrong credentials fall back to the anonymous consumer too (a stale login still reaches what
    # anyone may see), and with hide_credentials they do not reach the upstream.
    ctx = make_ctx([("Authorization", basic("jack2019", "nope"))])
    assert await plugin.rewrite(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.username == "anonymous"
    assert "Authorization" not in ctx.headers
    # A good login is still that consumer.
    ctx = make_ctx([("Authorization", basic("jack2019", "s3cret"))])
    await plugin.rewrite(ctx)
    assert ctx.consumer is not None and ctx.consumer.username == "jack"


async def test_an_anonymous_consumer_that_does_not_exist_does_not_open_the_route() -> None:
    err = await refused(BasicAuth(BasicAuthConfig(anonymous_consumer="ghost")), make_ctx(consumers=EMPTY_CONSUMERS))
    assert err.message == "Invalid user authorization"
