"""cors: config refusals with their paths, then preflights and the headers on every answer."""

from __future__ import annotations

from transform_support import answer, issues, loads, make_ctx

from gateway.plugins.cors import Cors

AT = "routes[0].plugins.cors"
PREFLIGHT = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT")]


def plugin(**config: object) -> Cors:
    return Cors(loads("cors", config))


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    found = issues("cors", {"allow_credential": True})
    assert found == [f"{AT}: Value error, you can not set '*' for other option when 'allow_credential' is true"]
    assert issues("cors", {"allow_origins": "https://a.example,not an origin"})[0].startswith(f"{AT}.allow_origins: ")
    assert issues("cors", {"allow_origins_by_regex": ["(unclosed"]})[0].startswith(f"{AT}.allow_origins_by_regex: ")
    assert issues("cors", {"max_age": -2})[0].startswith(f"{AT}.max_age: ")
    assert issues("cors", {"allow_headers": "X-A, bad header"})[0].startswith(f"{AT}.allow_headers: ")
    assert issues("cors", {"allow_origins_by_metadata": ["x"]})[0].startswith(f"{AT}.allow_origins_by_metadata")


def test_credentials_with_explicit_lists_load() -> None:
    config = {
        "allow_origins": "https://app.example",
        "allow_methods": "GET,POST",
        "allow_headers": "Authorization",
        "allow_credential": True,
    }
    assert loads("cors", config).allow_credential is True


# 2. hooks


async def test_preflight_is_answered_at_the_gateway_with_the_headers() -> None:
    reply = await plugin().rewrite(make_ctx(method="OPTIONS", headers=PREFLIGHT))
    assert reply is not None and reply.status == 200 and reply.body == b""
    headers = dict(reply.headers)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "*"
    assert headers["Access-Control-Allow-Headers"] == "*"
    assert headers["Access-Control-Max-Age"] == "5"
    assert "Vary" not in headers and "Access-Control-Allow-Credentials" not in headers


async def test_plain_options_and_other_methods_go_on() -> None:
    assert await plugin().rewrite(make_ctx(method="OPTIONS", headers=[("Origin", "https://a.example")])) is None
    assert await plugin().rewrite(make_ctx(method="GET", headers=PREFLIGHT)) is None


async def test_listed_origin_is_echoed_with_vary_and_credentials() -> None:
    cors = plugin(
        allow_origins="https://app.example,https://admin.example:8443",
        allow_methods="GET,POST",
        allow_headers="**",
        expose_headers="X-Request-Id",
        max_age=600,
        allow_credential=True,
    )
    ctx = make_ctx(headers=[("Origin", "https://app.example"), ("Access-Control-Request-Headers", "X-A, X-B")])
    response = answer(200, Vary="Accept-Encoding")
    await cors.header_filter(ctx, response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert response.headers["Access-Control-Allow-Headers"] == "X-A, X-B"
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers.getall("Vary") == ["Accept-Encoding", "Origin"]
    await cors.header_filter(ctx, response)  # idempotent: a cached answer passes again
    assert response.headers.getall("Vary") == ["Accept-Encoding", "Origin"]


async def test_unlisted_origin_gets_no_cors_headers_but_vary() -> None:
    cors = plugin(allow_origins="https://app.example")
    response = answer(200)
    await cors.header_filter(make_ctx(headers=[("Origin", "https://evil.example")]), response)
    assert not [name for name in response.headers if name.startswith("Access-Control")]
    assert response.headers["Vary"] == "Origin"


async def test_regex_origins_match_whole_origin_only() -> None:
    cors = plugin(allow_origins_by_regex=[r"https://[a-z]+\.example\.com"])
    good, bad = answer(200), answer(200)
    await cors.header_filter(make_ctx(headers=[("Origin", "https://api.example.com")]), good)
    await cors.header_filter(make_ctx(headers=[("Origin", "https://api.example.com.evil.net")]), bad)
    assert good.headers["Access-Control-Allow-Origin"] == "https://api.example.com"
    assert "Access-Control-Allow-Origin" not in bad.headers


async def test_error_answers_get_the_headers_so_browsers_can_read_them() -> None:
    response = answer(401, b'{"code":16}', source="gateway")
    await plugin(allow_origins="**").header_filter(make_ctx(headers=[("Origin", "https://x.example")]), response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://x.example"
    assert response.headers["Vary"] == "Origin"


async def test_origin_is_read_from_the_client_not_the_rewritten_headers() -> None:
    ctx = make_ctx(headers=[("Origin", "https://app.example")])
    ctx.headers.popall("Origin")
    response = answer(200)
    await plugin(allow_origins="https://app.example").header_filter(ctx, response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_timing_allow_origin_follows_its_own_lists() -> None:
    cors = plugin(allow_origins="https://app.example", timing_allow_origins="https://app.example,https://perf.example")
    for origin, timing in (
        ("https://app.example", "https://app.example"),
        ("https://perf.example", "https://perf.example"),  # not a CORS origin, but may read timings
        ("https://evil.example", None),
    ):
        response = answer(200)
        await cors.header_filter(make_ctx(headers=[("Origin", origin)]), response)
        assert response.headers.get("Timing-Allow-Origin") == timing
    by_regex = plugin(timing_allow_origins_by_regex=[r"https://.*\.example"])
    response = answer(200)
    await by_regex.header_filter(make_ctx(headers=[("Origin", "https://a.example")]), response)
    assert response.headers["Timing-Allow-Origin"] == "https://a.example"
    response = answer(200)
    await by_regex.header_filter(make_ctx(headers=[("Origin", "https://a.example.evil.net")]), response)
    assert "Timing-Allow-Origin" not in response.headers  # full match, not APISIX's search
    starred = answer(200)
    await plugin(timing_allow_origins="*").header_filter(make_ctx(), starred)
    assert starred.headers["Timing-Allow-Origin"] == "*"


def test_timing_allow_origins_star_is_refused_with_credentials() -> None:
    config = {"allow_origins": "https://a.example", "allow_methods": "GET", "allow_headers": "X-A"}
    found = issues("cors", {**config, "allow_credential": True, "timing_allow_origins": "*"})
    assert "allow_credential" in found[0]
    assert issues("cors", {"timing_allow_origins": "not an origin"})[0].startswith(f"{AT}.timing_allow_origins: ")
