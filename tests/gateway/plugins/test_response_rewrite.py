"""response-rewrite: config refusals with their paths, then the response hooks on hand-built answers."""

from __future__ import annotations

import base64
import gzip

import pytest
from transform_support import answer, chunks, issues, loads, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.response_rewrite import ResponseRewrite
from gateway.responses import ProxyResponse

AT = "routes[0].plugins.response-rewrite"


def plugin(**config: object) -> ResponseRewrite:
    return ResponseRewrite(loads("response-rewrite", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues("response-rewrite", {"status_code": 100})[0].startswith(f"{AT}.status_code: ")
    assert issues("response-rewrite", {"status_code": 599})[0].startswith(f"{AT}.status_code: ")
    assert "body_base64 needs a body" in issues("response-rewrite", {"body_base64": True})[0]
    assert "not valid base64" in issues("response-rewrite", {"body": "***", "body_base64": True})[0]
    assert issues("response-rewrite", {"vars": [["status", "=~", 200]]})[0].startswith(f"{AT}.vars: ")
    assert "unknown variable" in issues("response-rewrite", {"vars": [["nope", "==", 1]]})[0]
    assert "needs a list" in issues("response-rewrite", {"vars": [["status", "in", 200]]})[0]
    assert issues("response-rewrite", {"headers": {"add": ["no colon"]}})[0].startswith(f"{AT}.headers.add")
    assert issues("response-rewrite", {"filters": [{"regex": "(a", "replace": "b"}]})[0].startswith(f"{AT}.filters[0]")
    assert (
        "regex option" in issues("response-rewrite", {"filters": [{"regex": "a", "replace": "b", "options": "jz"}]})[0]
    )
    assert issues("response-rewrite", {"filters": [{"regex": "a"}]})[0].startswith(f"{AT}.filters[0].replace")
    assert issues("response-rewrite", {"filters": []})[0].startswith(f"{AT}.filters")
    assert "not both" in issues("response-rewrite", {"body": "x", "filters": [{"regex": "a", "replace": "b"}]})[0]
    assert issues("response-rewrite", {"headers": {"set": {"X-A": ["1", "2"]}}})[0].startswith(f"{AT}.headers")


def test_headers_forms() -> None:
    config = loads("response-rewrite", {"headers": {"add": ["Set-Cookie: a=1; Path=/"], "set": {"X-N": 1}}})
    assert config.headers.add == [("Set-Cookie", "a=1; Path=/")]
    assert config.headers.set == {"X-N": "1"}
    assert loads("response-rewrite", {"headers": {"X-Flat": "v"}}).headers.set == {"X-Flat": "v"}


# 2. hooks


async def test_status_headers_and_body_replace_a_streamed_answer() -> None:
    rewrite = plugin(
        status_code=203,
        body='{"replaced":true}',
        headers={"add": ["X-Added: 1"], "set": {"X-Status-Was": "$status", "Content-Type": "application/json"}},
    )
    ctx = make_ctx()
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    response = answer(200, X_Old="o", Content_Length="5", Content_Encoding="gzip", ETag='"v1"')
    response.stream, response.close = chunks(b"hello"), close
    await rewrite.header_filter(ctx, response)
    await rewrite.body_filter(ctx, response)
    assert response.status == 203
    assert response.headers["X-Status-Was"] == "200"  # values see the answer as it arrived
    assert response.headers["X-Added"] == "1"
    assert not {"Content-Length", "Content-Encoding", "ETag"} & set(response.headers)
    assert response.body == b'{"replaced":true}'
    assert response.stream is None and closed == [True]  # the upstream body is released unread


async def test_vars_limit_the_rewrite_to_matching_statuses() -> None:
    rewrite = plugin(vars=[["status", "in", [500, 502]]], status_code=503, body="down")
    ok = answer(200, b"fine")
    ctx = make_ctx()
    await rewrite.header_filter(ctx, ok)
    await rewrite.body_filter(ctx, ok)
    assert (ok.status, ok.body) == (200, b"fine")
    bad = answer(502, b"boom")
    ctx = make_ctx()
    await rewrite.header_filter(ctx, bad)
    await rewrite.body_filter(ctx, bad)
    assert (bad.status, bad.body) == (503, b"down")


async def test_vars_operators() -> None:
    cases = [
        ([["status", "==", 404]], 404, True),
        ([["status", "~=", 404]], 404, False),
        ([["status", ">", 399], ["status", "<", 500]], 404, True),
        ([["status", ">", 399], ["status", "<", 500]], 500, False),
        ([["status", "!", "in", [200, 201]]], 404, True),
        ([["OR", ["status", "==", 200], ["status", "==", 404]]], 404, True),
        ([["status", "~~", "^5"]], 503, True),
    ]
    for expression, status, expected in cases:
        rewrite = plugin(vars=expression, headers={"set": {"X-Hit": "1"}})
        response = answer(status)
        await rewrite.header_filter(make_ctx(), response)
        assert ("X-Hit" in response.headers) is expected, (expression, status)


async def test_gateway_generated_answers_are_rewritten_too() -> None:
    rewrite = plugin(vars=[["status", "==", 401]], body="please log in", headers={"remove": ["WWW-Authenticate"]})
    response = answer(401, b'{"code":16}', source="gateway", WWW_Authenticate="Bearer")
    ctx = make_ctx()
    await rewrite.header_filter(ctx, response)
    await rewrite.body_filter(ctx, response)
    assert response.body == b"please log in"
    assert "WWW-Authenticate" not in response.headers


async def test_base64_body() -> None:
    rewrite = plugin(body=base64.b64encode(b"\x00\xffbin").decode(), body_base64=True)
    response = answer(200, b"x")
    ctx = make_ctx()
    await rewrite.header_filter(ctx, response)
    await rewrite.body_filter(ctx, response)
    assert response.body == b"\x00\xffbin"


async def test_headers_only_leaves_the_body_stream_alone() -> None:
    rewrite = plugin(headers={"X-Flat": "v"})
    response = answer(200)
    stream = chunks(b"a")
    response.stream = stream
    ctx = make_ctx()
    await rewrite.header_filter(ctx, response)
    await rewrite.body_filter(ctx, response)
    assert response.stream is stream and response.headers["X-Flat"] == "v"


async def test_a_control_character_from_a_cookie_never_reaches_a_response_header() -> None:
    ctx = make_ctx(headers=[("Cookie", 'c="a\\015\\012Set-Cookie: x=1"')])
    with pytest.raises(GatewayError) as caught:
        await plugin(headers={"set": {"X-C": "$cookie_c"}}).header_filter(ctx, answer(200))
    assert caught.value.status == 400


# filters (APISIX's regex substitutions on the upstream body)


async def filtered(rewrite: ResponseRewrite, response: ProxyResponse) -> ProxyResponse:
    ctx = make_ctx()
    assert rewrite.needs_response_body
    await rewrite.header_filter(ctx, response)
    await response.read_body()  # the pipeline buffers the body for a plugin that needs it
    await rewrite.body_filter(ctx, response)
    return response


async def test_filters_replace_once_or_globally_with_ngx_re_options() -> None:
    rewrite = plugin(
        filters=[
            {"regex": "hello", "replace": "bye"},
            {"regex": "WORLD", "replace": "earth", "scope": "global", "options": "ijo"},
            {"regex": "(\\d+)-(\\d+)", "replace": "$2-$1", "scope": "global"},
        ]
    )
    response = answer(200, b"hello world, hello World! 1-2 3-4", Content_Length="34", ETag='"v1"')
    await filtered(rewrite, response)
    assert response.body == b"bye earth, hello earth! 2-1 4-3"
    assert "Content-Length" not in response.headers and "ETag" not in response.headers


async def test_filters_decode_a_gzip_body_first() -> None:
    body = gzip.compress(b'{"secret":"s3cr3t","user":"jack"}')
    response = answer(200, body, Content_Encoding="gzip", Content_Type="application/json")
    await filtered(plugin(filters=[{"regex": '"secret":"[^"]*"', "replace": '"secret":"***"'}]), response)
    assert response.body == b'{"secret":"***","user":"jack"}'
    assert "Content-Encoding" not in response.headers


async def test_filters_leave_a_body_they_cannot_decode_or_that_is_too_big() -> None:
    response = answer(200, b"\x00not brotli", Content_Encoding="br")
    await filtered(plugin(filters=[{"regex": "not", "replace": "yes"}]), response)
    assert response.body == b"\x00not brotli" and response.headers["Content-Encoding"] == "br"
    bomb = gzip.compress(b"a" * 100_000)
    response = answer(200, bomb, Content_Encoding="gzip")
    await filtered(plugin(filters=[{"regex": "a", "replace": "b"}], max_resp_body_size=1000), response)
    assert response.body == bomb
    response = answer(200, b"a" * 2000)
    await filtered(plugin(filters=[{"regex": "a", "replace": "b"}], max_resp_body_size=1000), response)
    assert response.body == b"a" * 2000


async def test_filters_apply_only_when_vars_match() -> None:
    rewrite = plugin(filters=[{"regex": "x", "replace": "y"}], vars=[["status", "==", 200]])
    assert (await filtered(rewrite, answer(500, b"x"))).body == b"x"
    assert (await filtered(rewrite, answer(200, b"x"))).body == b"y"
