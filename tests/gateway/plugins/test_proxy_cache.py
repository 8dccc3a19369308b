"""proxy-cache: config refusals with their paths, then lookups, storing rules, expiry and the memory bounds."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from transform_support import answer, chunks, issues, loads, make_ctx

from gateway.consumers import Consumer
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
    assert post.headers["Apisix-Cache-Status"] == "MISS"  # APISIX says MISS for a method it does not cache
    assert (await exchange(cache, method="POST")).headers["Apisix-Cache-Status"] == "MISS"
    await exchange(cache, response=answer(500, b"oops"))
    assert (await exchange(cache)).headers["Cache-Status"] == "MISS"


async def test_request_cache_control_counts_only_with_cache_control(now: list[float]) -> None:
    # APISIX: without cache_control a client's no-cache is ignored, so clients cannot empty the cache's worth.
    cache = plugin()
    await exchange(cache, response=answer(200, b"old"))
    ignored = await exchange(cache, response=answer(200, b"new"), headers=[("Cache-Control", "no-cache")])
    assert (ignored.body, ignored.headers["Apisix-Cache-Status"]) == (b"old", "HIT")
    cache = plugin(cache_control=True)
    await exchange(cache, response=answer(200, b"old", Cache_Control="max-age=60"))
    for directive in ("no-cache", "no-store"):
        new = answer(200, b"new", Cache_Control="max-age=60")
        bypass = await exchange(cache, response=new, headers=[("Cache-Control", directive)])
        assert (bypass.body, bypass.headers["Apisix-Cache-Status"]) == (b"new", "BYPASS")
    # A bypassed answer is not stored (APISIX's memory strategy).
    assert (await exchange(cache)).body == b"old"


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
        {"Set_Cookie": "session=1"},
        {"Vary": "*"},
        {"Vary": "Accept, *"},
    ],
)
async def test_upstream_answers_that_must_not_be_shared_are_not_stored(now: list[float], headers: dict) -> None:
    cache = plugin()
    await exchange(cache, response=answer(200, b"mine", **headers))
    assert (await exchange(cache, response=answer(200, b"yours"))).body == b"yours"


async def test_without_cache_control_cache_ttl_decides(now: list[float]) -> None:
    # APISIX: the upstream's max-age sets the ttl only with cache_control; private and no-store always count.
    cache = plugin(cache_ttl=30)
    await exchange(cache, response=answer(200, b"kept", Cache_Control="max-age=0"))
    now[0] += 20
    assert (await exchange(cache)).body == b"kept"
    now[0] += 11
    assert (await exchange(cache)).headers["Cache-Status"] == "EXPIRED"


async def test_with_cache_control_the_upstream_freshness_sets_the_ttl(now: list[float]) -> None:
    cache = plugin(cache_ttl=300, cache_control=True)
    await exchange(cache, response=answer(200, b"short", Cache_Control="public, max-age=5"))
    now[0] += 4
    assert (await exchange(cache)).body == b"short"
    now[0] += 2
    assert (await exchange(cache)).headers["Cache-Status"] == "EXPIRED"
    # No max-age, s-maxage or Expires: not stored; a past Expires: not stored; a future one: its ttl.
    await exchange(cache, "/none", answer(200, b"a"))
    assert (await exchange(cache, "/none", answer(200, b"b"))).body == b"b"
    await exchange(cache, "/zero", answer(200, b"a", Cache_Control="max-age=0"))
    assert (await exchange(cache, "/zero", answer(200, b"b"))).body == b"b"
    await exchange(cache, "/past", answer(200, b"a", Expires="Thu, 01 Jan 1970 00:00:00 GMT"))
    assert (await exchange(cache, "/past", answer(200, b"b"))).body == b"b"
    await exchange(cache, "/future", answer(200, b"a", Expires="Fri, 01 Jan 2100 00:00:00 GMT"))
    assert (await exchange(cache, "/future", answer(200, b"b"))).body == b"a"


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


async def test_cache_control_honours_request_max_age_min_fresh_and_only_if_cached(now: list[float]) -> None:
    cache = plugin(cache_control=True)
    ctx = make_ctx("/x", headers=[("Cache-Control", "only-if-cached")])
    with pytest.raises(GatewayError) as caught:
        await cache.access(ctx)
    assert caught.value.status == 504
    refusal = ProxyResponse(504, CIMultiDict(), b"", source="gateway")
    await cache.header_filter(ctx, refusal)
    assert refusal.headers["Apisix-Cache-Status"] == "MISS"
    await exchange(cache, response=answer(200, b"v1", Cache_Control="max-age=60"))
    now[0] += 10
    stale = await exchange(
        cache, response=answer(200, b"v2", Cache_Control="max-age=60"), headers=[("Cache-Control", "max-age=5")]
    )
    assert (stale.body, stale.headers["Apisix-Cache-Status"]) == (b"v2", "STALE")  # and stored anew
    now[0] += 10
    fresh_enough = await exchange(cache, headers=[("Cache-Control", "min-fresh=30")])
    assert (fresh_enough.body, fresh_enough.headers["Apisix-Cache-Status"]) == (b"v2", "HIT")
    too_old = await exchange(cache, response=answer(200, b"v3"), headers=[("Cache-Control", "min-fresh=55")])
    assert too_old.headers["Apisix-Cache-Status"] == "STALE"


def test_memory_cache_is_an_lru_bounded_by_count_and_bytes() -> None:
    cache = MemoryCache(max_entries=2, max_memory=10)
    entry = proxy_cache.Entry(200, (), b"12345", 0.0, 60.0)
    cache.put(("GET", "a"), entry)
    cache.put(("GET", "b"), entry)
    assert cache.get(("GET", "a")) is not None  # a is now the most recent
    cache.put(("GET", "c"), entry)
    assert [key for key, _ in cache.entries] == [("GET", "a"), ("GET", "c")]
    cache.put(("GET", "d"), proxy_cache.Entry(200, (), b"123456789", 0.0, 60.0))
    assert [key for key, _ in cache.entries] == [("GET", "d")] and cache.size == 9
    cache.put(("GET", "e"), proxy_cache.Entry(200, (), b"x" * 11, 0.0, 60.0))
    assert cache.get(("GET", "e")) is None and cache.size == 9
    assert cache.variants.keys() == {("GET", "d")}  # evicted keys leave no bookkeeping behind


async def test_vary_keeps_one_answer_per_value_of_the_named_headers(now: list[float]) -> None:
    cache = plugin()
    gzip = [("Accept-Encoding", "gzip")]
    await exchange(cache, response=answer(200, b"zipped", Vary="Accept-Encoding"), headers=gzip)
    plain = await exchange(cache, response=answer(200, b"plain", Vary="Accept-Encoding"))
    assert (plain.body, plain.headers["Apisix-Cache-Status"]) == (b"plain", "MISS")
    assert (await exchange(cache, headers=gzip)).body == b"zipped"
    assert (await exchange(cache)).body == b"plain"
    # An answer that varies on other headers replaces the variants made over the old ones.
    await exchange(cache, "/v", answer(200, b"by lang", Vary="Accept-Language"), headers=[("Accept-Language", "fr")])
    await exchange(cache, "/v", answer(200, b"no vary"))
    assert (await exchange(cache, "/v", headers=[("Accept-Language", "fr")])).body == b"no vary"


async def test_purge_drops_the_entry_200_then_404(now: list[float]) -> None:
    cache = plugin()
    await exchange(cache, response=answer(200, b"cached"))
    assert (await cache.access(make_ctx("/books", method="PURGE", headers=[("Host", "shop.example")]))).status == 200  # type: ignore[union-attr]
    assert (await exchange(cache, response=answer(200, b"fresh again"))).headers["Apisix-Cache-Status"] == "MISS"
    await cache.access(make_ctx("/books", method="PURGE", headers=[("Host", "shop.example")]))
    reply = await cache.access(make_ctx("/books", method="PURGE", headers=[("Host", "shop.example")]))
    assert reply is not None and reply.status == 404


async def test_consumer_isolation_keeps_each_consumer_s_answers_apart(now: list[float]) -> None:
    jack, rose = Consumer("jack"), Consumer("rose")

    async def as_consumer(cache: ProxyCache, consumer: Consumer | None, body: bytes) -> ProxyResponse:
        ctx = make_ctx("/me", headers=[("Host", "shop.example")])
        ctx.consumer = consumer
        reply = await cache.access(ctx)
        out = reply.to_response() if reply is not None else answer(200, body)
        if reply is not None:
            out.source = "plugin"
        await cache.header_filter(ctx, out)
        await cache.body_filter(ctx, out)
        return out

    cache = plugin()
    await as_consumer(cache, jack, b"jack's")
    assert (await as_consumer(cache, rose, b"rose's")).body == b"rose's"
    assert (await as_consumer(cache, jack, b"x")).body == b"jack's"
    assert (await as_consumer(cache, None, b"anyone's")).body == b"anyone's"
    shared = plugin(consumer_isolation=False)
    await as_consumer(shared, jack, b"jack's")
    assert (await as_consumer(shared, rose, b"rose's")).body == b"jack's"


async def test_cache_set_cookie_opts_in_to_storing_cookies(now: list[float]) -> None:
    cache = plugin(cache_set_cookie=True)
    await exchange(cache, response=answer(200, b"with cookie", Set_Cookie="a=1"))
    assert (await exchange(cache)).body == b"with cookie"


def test_max_resp_body_size_is_apisix_s_name_for_the_body_limit() -> None:
    assert loads("proxy-cache", {"max_resp_body_size": 10}).body_limit == 10
    assert loads("proxy-cache", {}).body_limit == 1024 * 1024
