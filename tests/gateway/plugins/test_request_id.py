"""request-id: config refusals with their paths, then ids generated, kept, replaced and echoed."""

from __future__ import annotations

import re
import uuid

from transform_support import answer, issues, loads, make_ctx

from gateway.plugins import request_id
from gateway.plugins.request_id import RequestId

AT = "routes[0].plugins.request-id"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def plugin(**config: object) -> RequestId:
    return RequestId(loads("request-id", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues("request-id", {"algorithm": "snowflake"})[0].startswith(f"{AT}.algorithm: ")
    assert issues("request-id", {"header_name": "X Id"})[0].startswith(f"{AT}.header_name: ")
    assert issues("request-id", {"range_id": {"length": 2}})[0].startswith(f"{AT}.range_id.length: ")
    assert issues("request-id", {"range_id": {"char_set": "abc def"}})[0].startswith(f"{AT}.range_id.char_set: ")


def test_defaults_are_apisix_s() -> None:
    config = loads("request-id", {})
    assert (config.header_name, config.include_in_response, config.algorithm) == ("X-Request-Id", True, "uuid")


# 2. hooks


async def test_generated_when_absent_passed_upstream_and_echoed() -> None:
    request_id = plugin()
    ctx = make_ctx()
    assert await request_id.rewrite(ctx) is None
    value = ctx.headers["X-Request-Id"]
    assert UUID.match(value)
    assert ctx.upstream_metadata == [("x-request-id", value)]  # gRPC upstreams get it as metadata
    assert ctx.vars["request_id"] == value
    response = answer(502, source="gateway")
    await request_id.header_filter(ctx, response)
    assert response.headers["X-Request-Id"] == value


async def test_a_well_formed_client_id_is_kept() -> None:
    ctx = make_ctx(headers=[("X-Request-Id", "client-abc.123")])
    await plugin().rewrite(ctx)
    assert ctx.headers["X-Request-Id"] == "client-abc.123"


async def test_malformed_or_repeated_client_ids_are_replaced() -> None:
    for headers in (
        [("X-Request-Id", "x" * 129)],
        [("X-Request-Id", "has space")],
        [("X-Request-Id", "caf\u00e9")],
        [("X-Request-Id", "a"), ("X-Request-Id", "b")],
    ):
        ctx = make_ctx(headers=headers)
        await plugin().rewrite(ctx)
        assert UUID.match(ctx.headers["X-Request-Id"]), headers
        assert len(ctx.headers.getall("X-Request-Id")) == 1


async def test_algorithms_and_custom_header() -> None:
    ctx = make_ctx()
    await plugin(algorithm="nanoid", header_name="X-Trace").rewrite(ctx)
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}", ctx.headers["X-Trace"])
    ctx = make_ctx()
    await plugin(algorithm="range_id", range_id={"char_set": "abcdef", "length": 10}).rewrite(ctx)
    assert re.fullmatch(r"[a-f]{10}", ctx.headers["X-Request-Id"])


async def test_not_echoed_when_include_in_response_is_false() -> None:
    request_id = plugin(include_in_response=False)
    ctx = make_ctx()
    await request_id.rewrite(ctx)
    response = answer(200)
    await request_id.header_filter(ctx, response)
    assert "X-Request-Id" not in response.headers


async def test_an_answer_refused_before_rewrite_still_gets_an_id() -> None:
    response = answer(403, source="gateway")
    ctx = make_ctx()
    await plugin().header_filter(ctx, response)
    assert UUID.match(response.headers["X-Request-Id"])


# APISIX 3's other algorithms, and the upstream's own id


async def test_uuidv7_ids_carry_the_time_and_sort_by_it() -> None:
    value = request_id.uuid7(now_ms=1_700_000_000_000)
    parsed = uuid.UUID(value)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert parsed.int >> 80 == 1_700_000_000_000
    assert request_id.uuid7(now_ms=1) < request_id.uuid7(now_ms=2)
    ctx = make_ctx()
    await plugin(algorithm="uuidv7").rewrite(ctx)
    assert uuid.UUID(ctx.headers["X-Request-Id"]).version == 7


async def test_ksuid_ids_are_27_base62_characters_sorted_by_time() -> None:
    first, later = request_id.ksuid(now=1_500_000_000), request_id.ksuid(now=1_600_000_000)
    assert re.fullmatch(r"[0-9A-Za-z]{27}", first) and first < later
    ctx = make_ctx()
    await plugin(algorithm="ksuid").rewrite(ctx)
    assert re.fullmatch(r"[0-9A-Za-z]{27}", ctx.headers["X-Request-Id"])


async def test_an_id_the_upstream_answered_with_is_kept() -> None:
    rid = plugin()
    ctx = make_ctx()
    await rid.rewrite(ctx)
    own = answer(200, X_Request_Id="from-upstream")
    await rid.header_filter(ctx, own)
    assert own.headers["X-Request-Id"] == "from-upstream"
    empty = answer(200, X_Request_Id="")
    await rid.header_filter(ctx, empty)
    assert empty.headers["X-Request-Id"] == ctx.headers["X-Request-Id"]
