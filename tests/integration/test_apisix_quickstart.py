"""APISIX's getting-started scenario, end to end: key-auth + limit-req + proxy-rewrite in front of the real HTTP
upstream and in front of a transcoded gRPC service, with a consumer holding a key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_harness import Client, Gateway, gateway_with_http_upstream

# One request a second per consumer, none queued: the second request within a second is refused.
LIMIT_REQ = {"rate": 1, "burst": 0, "key": "consumer_name", "rejected_code": 429}


def config(upstream_port: int, bookstore_port: int, descriptor_set: Path) -> dict[str, Any]:
    # Each test uses its own consumer, so the per-consumer rate of one test never refuses another's requests.
    consumers = ["tom", "jerry", "spike", "tyke", "butch"]
    return {
        "protos": [{"id": "bookstore", "descriptor_set": str(descriptor_set)}],
        "upstreams": [
            {"id": "httpbin", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}},
            {"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore_port}": 1}},
        ],
        "consumers": [{"username": name, "plugins": {"key-auth": {"key": f"{name}-key"}}} for name in consumers],
        "routes": [
            {
                "id": "getting-started",
                "uri": "/anything/*",
                "upstream_id": "httpbin",
                "plugins": {
                    "key-auth": {},
                    "limit-req": LIMIT_REQ,
                    "proxy-rewrite": {"regex_uri": ["^/anything/(.*)", "/echo/$1"]},
                },
            },
            {
                "id": "shelves",
                "uris": ["/api/shelves/*", "/api/whoami"],
                "upstream_id": "bookstore",
                "plugins": {
                    "grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"},
                    "key-auth": {},
                    "limit-req": LIMIT_REQ,
                    "proxy-rewrite": {
                        "regex_uri": ["^/api/shelves/(.*)", "/v1/shelves/$1", "^/api/whoami$", "/v1/debug/metadata"]
                    },
                },
            },
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Gateway]:
    with gateway_with_http_upstream(
        tmp_path_factory.mktemp("apisix-quickstart"),
        "quickstart",
        lambda port: config(port, bookstore, bookstore_descriptor_set),
    ) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def seen(body: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in body["headers"] if key.lower() == name.lower()]


async def burst(gateway: Gateway, path: str, n: int, **headers: str) -> list[tuple[int, dict[str, str]]]:
    async def one(session: aiohttp.ClientSession) -> tuple[int, dict[str, str]]:
        async with session.get(f"{gateway.url}{path}", headers=headers) as response:
            await response.read()
            return response.status, dict(response.headers)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(n))))


@pytest.mark.parametrize("path", ["/anything/ip", "/api/shelves/1"])
def test_without_a_key_401(client: Client, path: str) -> None:
    status, _, body = client.get(path)
    assert status == 401
    assert body == {"code": 16, "message": "Missing API key in request", "details": []}
    status, _, body = client.get(path, headers={"apikey": "not-a-key"})
    assert status == 401 and body["message"] == "Invalid API key in request"


def test_with_the_key_the_upstream_sees_the_rewritten_path_and_the_consumer(client: Client) -> None:
    status, _, body = client.get("/anything/ip?verbose=1", headers={"apikey": "tom-key"})
    assert status == 200, body
    assert body["path"] == "/echo/ip?verbose=1"
    assert seen(body, "X-Consumer-Username") == ["tom"]
    assert seen(body, "apikey") == ["tom-key"]  # hide_credentials is off, as in APISIX's default


def test_a_client_cannot_claim_to_be_a_consumer(client: Client) -> None:
    headers = {"apikey": "jerry-key", "X-Consumer-Username": "tom"}
    status, _, body = client.get("/anything/forged", headers=headers)
    assert status == 200, body
    assert seen(body, "X-Consumer-Username") == ["jerry"]


async def test_past_the_rate_429(gateway: Gateway) -> None:
    answers = await burst(gateway, "/anything/ip", 5, apikey="spike-key")
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 429, 429, 429, 429]
    refused = next(headers for status, headers in answers if status == 429)
    assert refused["Retry-After"] == "1"


def test_grpc_route_rewritten_to_the_http_rule_with_the_key(client: Client) -> None:
    status, _, body = client.get("/api/shelves/1", headers={"apikey": "tom-key"})
    assert status == 200, body
    assert body["id"] == "1" and body["theme"] == "Fiction"


def test_grpc_upstream_sees_the_consumer_as_metadata(client: Client) -> None:
    status, _, body = client.get("/api/whoami", headers={"apikey": "tyke-key"})
    assert status == 200, body
    assert body["metadata"]["x-consumer-username"] == "tyke"


def test_grpc_route_rewritten_path_with_no_rule_is_404(client: Client) -> None:
    status, _, body = client.get("/api/shelves/1/nothing/here", headers={"apikey": "jerry-key"})
    assert status == 404 and body["code"] == 5


async def test_grpc_route_past_the_rate_429(gateway: Gateway) -> None:
    answers = await burst(gateway, "/api/shelves/1", 5, apikey="butch-key")
    assert sorted(status for status, _ in answers) == [200, 429, 429, 429, 429]
