"""End to end: limit-count, limit-req, limit-conn, ip-restriction and real-ip in the real gateway process,
on a plain HTTP route and on a transcoded gRPC route."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from gateway_harness import Gateway, start_gateway, start_http_upstream

TRANSCODE = {"grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}}


def http_route(host: str, plugins: dict[str, Any]) -> dict[str, Any]:
    return {"id": host, "uri": "/*", "host": host, "upstream_id": "echo", "plugins": plugins}


def grpc_route(host: str, plugins: dict[str, Any]) -> dict[str, Any]:
    return {"id": host, "uri": "/v1/*", "host": host, "upstream_id": "bookstore", "plugins": {**TRANSCODE, **plugins}}


def real_ip(trusted: list[str], source: str = "http_x_forwarded_for", **extra: Any) -> dict[str, Any]:
    return {"source": source, "trusted_addresses": trusted, **extra}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Gateway]:
    """One gateway for the module; routes are told apart by Host."""
    upstream, port = start_http_upstream("traffic")
    shared_count = {"count": 3, "time_window": 60, "group": "shared"}
    config = {
        "protos": [{"id": "bookstore", "descriptor_set": str(bookstore_descriptor_set)}],
        "upstreams": [
            {"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{port}": 1}, "timeout": {"read": 3}},
            {"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore}": 1}, "timeout": {"read": 3}},
        ],
        "routes": [
            http_route("count.test", {"limit-count": {"count": 100, "time_window": 5, "rejected_msg": "over quota"}}),
            http_route("group-a.test", {"limit-count": shared_count}),
            http_route("group-b.test", {"limit-count": shared_count}),
            http_route("req.test", {"limit-req": {"rate": 1, "burst": 0, "key": "http_x_user", "rejected_code": 429}}),
            http_route("req-delay.test", {"limit-req": {"rate": 10, "burst": 3}}),
            http_route(
                "conn.test",
                {"limit-conn": {"conn": 1, "burst": 1, "default_conn_delay": 0.1, "only_use_default_delay": True}},
            ),
            http_route(
                "conn-count.test",
                {
                    "limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 429},
                    "limit-count": {"count": 1, "time_window": 60},
                },
            ),
            http_route("deny.test", {"ip-restriction": {"blacklist": ["127.0.0.0/8", "::1"]}}),
            http_route("allow.test", {"ip-restriction": {"whitelist": ["127.0.0.1/32", "2001:db8::/32"]}}),
            http_route(
                "realip.test",
                {
                    "real-ip": real_ip(["127.0.0.1"], recursive=True),
                    "ip-restriction": {"whitelist": ["203.0.113.0/24"], "message": "not you"},
                },
            ),
            http_route(
                "realip-untrusted.test",
                {"real-ip": real_ip(["10.0.0.0/8"]), "ip-restriction": {"whitelist": ["203.0.113.0/24"]}},
            ),
            http_route(
                "realip-count.test",
                {"real-ip": real_ip(["127.0.0.1"]), "limit-count": {"count": 1, "time_window": 60}},
            ),
            grpc_route("count.grpc", {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}}),
            grpc_route("req.grpc", {"limit-req": {"rate": 1, "burst": 0}}),
            grpc_route("conn.grpc", {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1}}),
            grpc_route(
                "ip.grpc",
                {
                    "real-ip": real_ip(["127.0.0.1"], "http_x_real_ip"),
                    "ip-restriction": {"blacklist": ["198.51.100.7"]},
                },
            ),
        ],
    }
    path = tmp_path_factory.mktemp("traffic") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        gw = start_gateway(path)
    except BaseException:
        upstream.stop()
        raise
    yield gw
    gw.process.stop()
    upstream.stop()


async def fetch(
    session: aiohttp.ClientSession, gateway: Gateway, host: str, path: str = "/echo", **headers: str
) -> tuple[int, dict[str, str], Any]:
    async with session.get(f"{gateway.url}{path}", headers={"Host": host, **headers}) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, dict(response.headers), body


async def gather(gateway: Gateway, host: str, n: int, path: str = "/echo") -> list[tuple[int, dict[str, str], Any]]:
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(fetch(session, gateway, host, path) for _ in range(n))))


async def one(gateway: Gateway, host: str, path: str = "/echo", **headers: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session:
        return await fetch(session, gateway, host, path, **headers)


# limit-count


async def test_limit_count_is_exact_under_concurrency(gateway: Gateway) -> None:
    answers = await gather(gateway, "count.test", 300)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 100
    assert statuses.count(503) == 200
    refused = next(answer for answer in answers if answer[0] == 503)
    assert refused[2]["message"] == "over quota"
    assert refused[1]["X-RateLimit-Limit"] == "100"
    assert refused[1]["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused[1]["Retry-After"]) <= 5
    remaining = sorted(int(headers["X-RateLimit-Remaining"]) for status, headers, _ in answers if status == 200)
    assert remaining == list(range(100))


async def test_limit_count_group_shares_one_counter_across_routes(gateway: Gateway) -> None:
    statuses = [(await one(gateway, host))[0] for host in ("group-a.test", "group-b.test", "group-a.test")]
    assert statuses == [200, 200, 200]
    assert (await one(gateway, "group-b.test"))[0] == 503


async def test_limit_count_on_a_transcoded_grpc_route(gateway: Gateway) -> None:
    first = await one(gateway, "count.grpc", "/v1/shelves")
    assert first[0] == 200 and "shelves" in first[2]
    assert (first[1]["X-RateLimit-Limit"], first[1]["X-RateLimit-Remaining"]) == ("2", "1")
    assert (await one(gateway, "count.grpc", "/v1/shelves"))[0] == 200
    status, headers, body = await one(gateway, "count.grpc", "/v1/shelves")
    assert status == 429
    assert body["code"] == 8  # RESOURCE_EXHAUSTED
    assert "Retry-After" in headers


# limit-req


async def test_limit_req_refuses_past_burst_per_key_with_fallback(gateway: Gateway) -> None:
    assert (await one(gateway, "req.test", **{"X-User": "alice"}))[0] == 200
    status, headers, _ = await one(gateway, "req.test", **{"x-user": "alice"})
    assert (status, headers["Retry-After"]) == (429, "1")
    assert (await one(gateway, "req.test", **{"X-User": "bob"}))[0] == 200
    # no X-User: counted under the client address, so leaving the header out is no way around it
    assert (await one(gateway, "req.test"))[0] == 200
    assert (await one(gateway, "req.test"))[0] == 429


async def test_limit_req_delays_burst_requests(gateway: Gateway) -> None:
    started = time.monotonic()
    answers = await gather(gateway, "req-delay.test", 4)
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in answers] == [200] * 4
    assert elapsed >= 0.25  # spaced at 10 a second: delays of 0, 0.1, 0.2 and 0.3 s


async def test_limit_req_on_a_transcoded_grpc_route(gateway: Gateway) -> None:
    assert (await one(gateway, "req.grpc", "/v1/shelves"))[0] == 200
    status, headers, body = await one(gateway, "req.grpc", "/v1/shelves")
    assert (status, body["code"], headers["Retry-After"]) == (503, 8, "1")


# limit-conn


async def test_limit_conn_delays_within_burst_refuses_past_it_and_releases(gateway: Gateway) -> None:
    answers = await gather(gateway, "conn.test", 3, "/slow?ms=400")
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 503]
    refused = next(headers for status, headers, _ in answers if status == 503)
    assert refused["Retry-After"] == "1"
    # every slot was given back in the log phase
    assert [status for status, _, _ in await gather(gateway, "conn.test", 2, "/slow?ms=50")] == [200, 200]


async def test_limit_conn_releases_a_request_another_plugin_refused(gateway: Gateway) -> None:
    assert (await one(gateway, "conn-count.test"))[0] == 200
    for _ in range(3):
        # limit-conn counts it in, limit-count refuses it: the slot must come back each time, or
        # the next answer would be limit-conn's 429 rather than limit-count's 503
        assert (await one(gateway, "conn-count.test"))[0] == 503


async def test_limit_conn_on_a_transcoded_grpc_route(gateway: Gateway) -> None:
    answers = await gather(gateway, "conn.grpc", 2, "/v1/debug/sleep?millis=300")
    assert sorted(status for status, _, _ in answers) == [200, 503]
    assert (await one(gateway, "conn.grpc", "/v1/debug/sleep?millis=1"))[0] == 200


# ip-restriction and real-ip


async def test_ip_restriction_blacklist_and_whitelist(gateway: Gateway) -> None:
    status, _, body = await one(gateway, "deny.test")
    assert (status, body["message"]) == (403, "Your IP address is not allowed")
    assert (await one(gateway, "allow.test"))[0] == 200


async def test_forwarded_headers_do_not_fool_ip_restriction(gateway: Gateway) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    assert (await one(gateway, "deny.test", **forged))[0] == 403
    # a real-ip whose trusted proxies do not include the peer believes no header
    assert (await one(gateway, "realip-untrusted.test", **forged))[0] == 403


async def test_real_ip_from_trusted_peer_feeds_ip_restriction_and_upstream(gateway: Gateway) -> None:
    status, _, body = await one(gateway, "realip.test", **{"x-forwarded-for": "198.51.100.1, 203.0.113.5, 127.0.0.1"})
    assert status == 200
    assert ["X-Real-IP", "203.0.113.5"] in body["headers"]
    status, _, body = await one(gateway, "realip.test")
    assert (status, body["message"]) == (403, "not you")


async def test_real_ip_address_is_the_limit_key(gateway: Gateway) -> None:
    assert (await one(gateway, "realip-count.test", **{"X-Forwarded-For": "203.0.113.1"}))[0] == 200
    assert (await one(gateway, "realip-count.test", **{"X-Forwarded-For": "203.0.113.2"}))[0] == 200
    assert (await one(gateway, "realip-count.test", **{"X-Forwarded-For": "203.0.113.1"}))[0] == 503


async def test_real_ip_and_ip_restriction_on_a_transcoded_grpc_route(gateway: Gateway) -> None:
    status, _, body = await one(gateway, "ip.grpc", "/v1/shelves", **{"X-Real-IP": "198.51.100.7"})
    assert (status, body["code"]) == (403, 7)  # PERMISSION_DENIED
    assert (await one(gateway, "ip.grpc", "/v1/shelves", **{"X-Real-IP": "198.51.100.8"}))[0] == 200
