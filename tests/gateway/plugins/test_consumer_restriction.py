"""consumer-restriction: config validation, then the access hook by consumer, group, route and method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.consumers import Consumer, ConsumerIndex
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.consumer_restriction import ConsumerRestriction, ConsumerRestrictionConfig
from gateway.responses import Reply
from transcoder.status import Code

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}
PATH = "routes[0].plugins.consumer-restriction"


def document(plugin: dict[str, Any], consumers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {"consumer-restriction": plugin}}],
        "consumers": list(consumers),
    }


def issues(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(doc)
    return [str(issue) for issue in caught.value.issues]


JACK = Consumer("jack", group_id="gold")
ROSE = Consumer("rose", group_id="silver")
CONSUMERS = ConsumerIndex([JACK, ROSE], {})


def make_ctx(consumer: Consumer | None = None, method: str = "GET", route_id: str = "r") -> RequestContext:
    request = make_mocked_request(method, "/echo")
    ctx = RequestContext(
        request=request,
        route_id=route_id,
        method=method,
        path="/echo",
        query="",
        headers=CIMultiDict(),
        client_ip="127.0.0.1",
        consumers=CONSUMERS,
        body_limit=1024,
    )
    ctx.consumer = consumer
    return ctx


def plugin(**config: Any) -> ConsumerRestriction:
    return ConsumerRestriction(ConsumerRestrictionConfig.model_validate(config))


async def refusal(restriction: ConsumerRestriction, ctx: RequestContext) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await restriction.access(ctx)
    return caught.value


# 1. config


def test_one_list_at_least_and_both_are_allowed() -> None:
    # APISIX's anyOf: whitelist and blacklist together are a valid config (the blacklist is checked first).
    ConsumerRestrictionConfig.model_validate({"whitelist": ["a"], "blacklist": ["b"]})
    assert issues(document({"type": "route_id"}))[0].startswith(f"{PATH}: Value error, give one of")


def test_fields_are_checked_with_their_paths() -> None:
    found = issues(
        document(
            {
                "type": "ip",
                "whitelist": [],
                "rejected_code": 100,
                "rejected_msg": "",
                "allowed_by_methods": [{"user": "jack", "methods": ["FETCH"]}],
                "extra": 1,
            }
        )
    )
    paths = sorted(i.split(":")[0] for i in found)
    assert paths == [
        f"{PATH}.allowed_by_methods[0].methods[0]",
        f"{PATH}.extra",
        f"{PATH}.rejected_code",
        f"{PATH}.rejected_msg",
        f"{PATH}.type",
        f"{PATH}.whitelist",
    ]


def test_defaults_match_apisix() -> None:
    config = ConsumerRestrictionConfig(whitelist=["jack"])
    assert (config.type, config.rejected_code, config.rejected_msg) == ("consumer_name", 403, None)
    assert ConsumerRestriction.priority == 2400


def test_it_may_be_configured_on_a_consumer() -> None:
    doc = document({"whitelist": ["jack"]}, consumers=[{"username": "jack", "plugins": {"consumer-restriction": {}}}])
    assert issues(doc)[0].startswith("consumers[0].plugins.consumer-restriction:")


# 2. hooks


async def test_whitelist_allows_listed_consumers_and_forbids_the_rest() -> None:
    restriction = plugin(whitelist=["jack"])
    assert await restriction.access(make_ctx(JACK)) is None
    err = await refusal(restriction, make_ctx(ROSE))
    assert (err.status, err.code, err.message) == (403, Code.PERMISSION_DENIED, "The consumer_name is forbidden.")


async def test_blacklist_forbids_listed_consumers_only() -> None:
    restriction = plugin(blacklist=["jack"])
    assert await restriction.access(make_ctx(ROSE)) is None
    assert (await refusal(restriction, make_ctx(JACK))).status == 403


async def test_no_consumer_is_401() -> None:
    for restriction in (
        plugin(whitelist=["jack"]),
        plugin(blacklist=["jack"]),
        plugin(type="consumer_group_id", blacklist=["x"]),
    ):
        err = await refusal(restriction, make_ctx(None))
        kind = restriction.config.type
        assert (err.status, err.message) == (401, f"The request is rejected, please check the {kind} for this request")


async def test_service_id_restriction_reads_the_route_s_service() -> None:
    restriction = plugin(type="service_id", whitelist=["svc"])
    ctx = make_ctx(None)
    err = await refusal(restriction, ctx)
    assert err.message == "The request is rejected, please check the service_id for this request"
    ctx.service_id = "svc"
    assert await restriction.access(ctx) is None
    ctx.service_id = "other"
    assert (await refusal(restriction, ctx)).message == "The service_id is forbidden."


async def test_blacklist_is_checked_before_the_whitelist() -> None:
    restriction = plugin(whitelist=["jack", "rose"], blacklist=["rose"])
    assert await restriction.access(make_ctx(JACK)) is None
    assert (await refusal(restriction, make_ctx(ROSE))).message == "The consumer_name is forbidden."


async def test_restrict_by_consumer_group() -> None:
    restriction = plugin(type="consumer_group_id", whitelist=["gold"])
    assert await restriction.access(make_ctx(JACK)) is None
    err = await refusal(restriction, make_ctx(ROSE))
    assert err.message == "The consumer_group_id is forbidden."
    # A consumer outside every group has no value to compare: refused as unidentified.
    assert (await refusal(restriction, make_ctx(Consumer("loner")))).status == 401


async def test_restrict_by_route() -> None:
    restriction = plugin(type="route_id", blacklist=["admin"])
    assert await restriction.access(make_ctx(JACK, route_id="r")) is None
    err = await refusal(restriction, make_ctx(JACK, route_id="admin"))
    assert err.message == "The route_id is forbidden."


async def test_restrict_by_service_without_a_known_service_refuses() -> None:
    restriction = plugin(type="service_id", whitelist=["s1"])
    assert (await refusal(restriction, make_ctx(JACK))).status == 401


async def test_rejected_code_and_message_are_configurable() -> None:
    err = await refusal(plugin(whitelist=["jack"], rejected_code=429, rejected_msg="go away"), make_ctx(ROSE))
    assert (err.status, err.code, err.message) == (429, Code.RESOURCE_EXHAUSTED, "go away")
    reply = await plugin(whitelist=["jack"], rejected_code=200).access(make_ctx(ROSE))
    assert reply == Reply(200, {"message": "The consumer_name is forbidden."})


async def test_allowed_by_methods_limits_listed_users_to_their_methods() -> None:
    restriction = plugin(allowed_by_methods=[{"user": "jack", "methods": ["POST"]}])
    assert await restriction.access(make_ctx(JACK, method="POST")) is None
    assert (await refusal(restriction, make_ctx(JACK, method="GET"))).status == 403
    # Users not listed are not limited by it (APISIX).
    assert await restriction.access(make_ctx(ROSE, method="GET")) is None


async def test_a_whitelisted_consumer_skips_the_method_check() -> None:
    restriction = plugin(whitelist=["jack"], allowed_by_methods=[{"user": "jack", "methods": ["POST"]}])
    assert await restriction.access(make_ctx(JACK, method="GET")) is None
    assert (await refusal(restriction, make_ctx(ROSE, method="POST"))).status == 403
