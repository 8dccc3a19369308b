"""proxy-cache: config refusals with their paths, then lookups, storing rules, expiry and the memory bounds."""

from __future__ import annotations

import pytest
from transform_support import answer, chunks, issues, loads, make_ctx

from gateway.errors import GatewayError
from gateway.plugins import proxy_cache
from gateway.plugins.proxy_cache import MemoryCache, ProxyCache
from gateway.responses import ProxyResponse

AT = "routes[0].plugins.proxy-cache"


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [1000.0]
    monkeypatch.setattr(proxy_cache, "clock", lambda: clock[0])
    return clock


def plugin(**config: object) -> ProxyCache:
    return ProxyCache(loads("proxy-cache", config))


async def exchange(
    cache: ProxyCache, target: str = "/books", response: ProxyResponse | None = None, **kwargs: object
) -> ProxyResponse:
    """One request through access, then (unless answered from the cache) the given upstream answer."""
    headers = list(kwargs.pop("headers", []))  # type: ignore[call-overload]
    if not any(name == "Host" for name, _ in headers):
        headers.append(("Host", "shop.example"))
    ctx = make_ctx(target, headers=headers, **kwargs)  # type: ignore[arg-type]
    reply = await cache.access(ctx)
    if reply is not None:
        out = reply.to_response()
        out.source = "plugin"
    else:
        out = response if response is not None else answer(200, b"fresh", Content_Type="text/plain")
    await cache.header_filter(ctx, out)
    await cache.body_filter(ctx, out)
    if out.stream is not None:
        out.body = b"".join([chunk async for chunk in out.stream])
        out.stream = None
    return out


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert "memory" in issues("proxy-cache", {"cache_strategy": "disk"})[0]
    assert issues("proxy-cache", {"cache_key": ["$request_method"]})[0].startswith(f"{AT}.cache_key: ")
    assert issues("proxy-cache", {"cache_key": ["$nope"]})[0].startswith(f"{AT}.cache_key: ")
    assert issues("proxy-cache", {"cache_method": ["PUT"]})[0].startswith(f"{AT}.cache_method[0]: ")
    assert issues("proxy-cache", {"cache_http_status": [200, 200]})[0].startswith(f"{AT}.cache_http_status: ")
    assert issues("proxy-cache", {"cache_http_status": [100]})[0].startswith(f"{AT}.cache_http_status: ")
    assert issues("proxy-cache", {"cache_ttl": 0})[0].startswith(f"{AT}.cache_ttl: ")
    assert issues("proxy-cache", {"max_entries": 0})[0].startswith(f"{AT}.max_entries: ")


def test_defaults_are_apisix_s() -> None:
    config = loads("proxy-cache", {})
    assert config.cache_key == ["$host", "$request_uri"]
    assert config.cache_method == ["GET", "HEAD"]
    assert config.cache_http_status == [200, 301, 404]
    assert config.cache_ttl == 300


# 2. hooks


async def test_miss_then_hit_then_expired(now: list[float]) -> None:
    cache = plugin(cache_ttl=10)
    first = await exchange(cache)
    assert first.headers["Cache-Status"] == first.headers["Apisix-Cache-Status"] == "MISS"
    now[0] += 4
    hit = await exchange(cache, response=answer(500))
    assert (hit.status, hit.body, hit.headers["Cache-Status"]) == (200, b"fresh", "HIT")
    assert hit.headers["Age"] == "4" and hit.headers["Content-Type"] == "text/plain"
    now[0] += 7
    expired = await exchange(cache, response=answer(200, b"newer"))
    assert (expired.body, expired.headers["Cache-Status"]) == (b"newer", "EXPIRED")
    assert (await exchange(cache)).body == b"newer"


async def test_streamed_bodies_are_teed_and_stored_when_whole(now: list[float]) -> None:
    cache = plugin()
    streamed = answer(200)
    streamed.stream = chunks(b"par", b"ts")
    assert (await exchange(cache, response=streamed)).body == b"parts"
    assert (await exchange(cache)).body == b"parts"


async def test_key_is_host_and_request_uri(now: list[float]) -> None:
    cache = plugin()
    await exchange(cache, "/books?page=1", answer(200, b"page 1"))
    assert (await exchange(cache, "/books?page=2", answer(200, b"page 2"))).headers["Cache-Status"] == "MISS"
    assert (await exchange(cache, "/books?page=1")).body == b"page 1"
    other_host = await exchange(cache, "/books?page=1", answer(200, b"other"), headers=[("Host", "b.example")])
    assert other_host.body == b"other"


async def test_head_is_served_from_get_but_never_stored(now: list[float]) -> None:
    cache = plugin()
    await exchange(cache, method="HEAD", response=answer(200, b""))
    assert (await exchange(cache, response=answer(200, b"get body"))).headers["Cache-Status"] == "MISS"
    head = await exchange(cache, method="HEAD")
    assert head.headers["Cache-Status"] == "HIT"


async def test_methods_and_statuses_not_listed_are_not_cached(now: list[float]) -> None:
    cache = plugin()
    post = await exchange(cache, method="POST")
    assert "Cache-Status" not in post.headers
    await exchange(cache, response=answer(500, b"oops"))
    assert (await exchange(cache)).headers["Cache-Status"] == "MISS"


async def test_request_no_cache_bypasses_and_refreshes(now: list[float]) -> None:
    cache = plugin()
    await exchange(cache, response=answer(200, b"old"))
    bypass = await exchange(cache, response=answer(200, b"new"), headers=[("Cache-Control", "no-cache")])
    assert (bypass.body, bypass.headers["Cache-Status"]) == (b"new", "BYPASS")
    pragma = await exchange(cache, response=answer(200, b"newest"), headers=[("Pragma", "no-cache")])
    assert pragma.headers["Cache-Status"] == "BYPASS"
    assert (await exchange(cache)).body == b"newest"


async def test_cache_bypass_and_no_cache_vars(now: list[float]) -> None:
    cache = plugin(cache_bypass=["$arg_bypass"], no_cache=["$arg_nocache"])
    await exchange(cache, "/a?nocache=1", answer(200, b"not kept"))
    assert (await exchange(cache, "/a?nocache=1", answer(200, b"again"))).headers["Cache-Status"] == "MISS"
    await exchange(cache, "/b", answer(200, b"kept"))
    assert (await exchange(cache, "/b?bypass=0")).headers["Cache-Status"] == "MISS"  # "0" does not count
    await exchange(cache, "/c", answer(200, b"c"))
    assert (await exchange(cache, "/c")).headers["Cache-Status"] == "HIT"


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache_Control": "no-store"},
        {"Cache_Control": "private, max-age=60"},
        {"Cache_Control": "no-cache"},
        {"Cache_Control": "max-age=0"},
        {"Set_Cookie": "session=1"},
        {"Vary": "Accept-Encoding"},
    ],
)
async def test_upstream_answers_that_must_not_be_shared_are_not_stored(now: list[float], headers: dict) -> None:
    cache = plugin()
    await exchange(cache, response=answer(200, b"mine", **headers))
    assert (await exchange(cache, response=answer(200, b"yours"))).body == b"yours"


async def test_upstream_max_age_sets_the_ttl(now: list[float]) -> None:
    cache = plugin(cache_ttl=300)
    await exchange(cache, response=answer(200, b"short", Cache_Control="public, max-age=5", Vary="Origin"))
    now[0] += 4
    assert (await exchange(cache)).body == b"short"
    now[0] += 2
    assert (await exchange(cache)).headers["Cache-Status"] == "EXPIRED"


async def test_authorized_requests_are_stored_only_when_the_upstream_allows(now: list[float]) -> None:
    cache = plugin()
    auth = [("Authorization", "Bearer t")]
    await exchange(cache, response=answer(200, b"private"), headers=auth)
    assert (await exchange(cache, response=answer(200, b"anon"))).body == b"anon"
    await exchange(cache, "/p", answer(200, b"public", Cache_Control="public"), headers=auth)
    assert (await exchange(cache, "/p")).body == b"public"


async def test_gateway_and_plugin_answers_are_not_stored(now: list[float]) -> None:
    cache = plugin()
    await exchange(cache, response=answer(404, b"no route", source="gateway"))
    assert (await exchange(cache)).headers["Cache-Status"] == "MISS"


async def test_large_bodies_are_not_stored(now: list[float]) -> None:
    cache = plugin(max_body_size=4)
    big = answer(200)
    big.stream = chunks(b"abc", b"def")
    assert (await exchange(cache, response=big)).body == b"abcdef"
    assert (await exchange(cache, response=answer(200, b"x", Content_Length="100"))).headers["Cache-Status"] == "MISS"
    assert (await exchange(cache)).headers["Cache-Status"] == "MISS"
    assert not cache.cache.entries or all(len(e.body) <= 4 for e in cache.cache.entries.values())


async def test_hide_cache_headers(now: list[float]) -> None:
    cache = plugin(hide_cache_headers=True)
    first = await exchange(cache, response=answer(200, b"x", Cache_Control="max-age=60", Expires="soon"))
    assert "Cache-Control" not in first.headers and "Expires" not in first.headers
    hit = await exchange(cache)
    assert hit.headers["Cache-Status"] == "HIT" and "Cache-Control" not in hit.headers


async def test_cache_control_honours_request_max_age_and_only_if_cached(now: list[float]) -> None:
    cache = plugin(cache_control=True)
    with pytest.raises(GatewayError) as caught:
        await cache.access(make_ctx("/x", headers=[("Cache-Control", "only-if-cached")]))
    assert caught.value.status == 504
    await exchange(cache)
    now[0] += 10
    stale = await exchange(cache, response=answer(200, b"re"), headers=[("Cache-Control", "max-age=5")])
    assert stale.headers["Cache-Status"] == "EXPIRED"


def test_memory_cache_is_an_lru_bounded_by_count_and_bytes() -> None:
    cache = MemoryCache(max_entries=2, max_memory=10)
    entry = proxy_cache.Entry(200, (), b"12345", 0.0, 60.0)
    cache.put(("GET", "a"), entry)
    cache.put(("GET", "b"), entry)
    assert cache.get(("GET", "a")) is not None  # a is now the most recent
    cache.put(("GET", "c"), entry)
    assert list(cache.entries) == [("GET", "a"), ("GET", "c")]
    cache.put(("GET", "d"), proxy_cache.Entry(200, (), b"123456789", 0.0, 60.0))
    assert list(cache.entries) == [("GET", "d")] and cache.size == 9
    cache.put(("GET", "e"), proxy_cache.Entry(200, (), b"x" * 11, 0.0, 60.0))
    assert ("GET", "e") not in cache.entries and cache.size == 9
