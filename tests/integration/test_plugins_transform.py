"""End to end: proxy-rewrite, response-rewrite, cors, request-id, redirect, fault-injection and proxy-cache
in the real gateway process, on a plain HTTP route and on a transcoded gRPC route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import Client, Gateway, start_gateway, start_http_upstream

TRANSCODE = {"grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}}
ORIGIN = "https://app.example"


def http_route(host: str, plugins: dict[str, Any]) -> dict[str, Any]:
    return {"id": host, "uri": "/*", "host": host, "upstream_id": "echo", "plugins": plugins}


def grpc_route(host: str, plugins: dict[str, Any]) -> dict[str, Any]:
    return {"id": host, "uri": "/v1/*", "host": host, "upstream_id": "bookstore", "plugins": {**TRANSCODE, **plugins}}


CORS = {"allow_origins": ORIGIN, "allow_methods": "GET,POST", "allow_headers": "apikey", "allow_credential": True}
KEY_AUTH = {"key-auth": {}}
ABORT_ON_ARG = {"abort": {"http_status": 418, "body": "fault for $arg_who", "vars": [[["arg_fault", "==", "1"]]]}}


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Client]:
    """One gateway for the module; routes are told apart by Host."""
    upstream, port = start_http_upstream("transform")
    config = {
        "protos": [{"id": "bookstore", "descriptor_set": str(bookstore_descriptor_set)}],
        "upstreams": [
            {"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{port}": 1}, "timeout": {"read": 3}},
            {"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore}": 1}, "timeout": {"read": 3}},
        ],
        "consumers": [{"username": "ann", "plugins": {"key-auth": {"key": "ann-key"}}}],
        "routes": [
            http_route(
                "rewrite.test",
                {
                    "proxy-rewrite": {
                        "regex_uri": ["^/old/(.*)", "/echo/new/$1"],
                        "method": "PUT",
                        "host": "backend.internal",
                        "headers": {"set": {"X-Tenant": "$arg_tenant"}, "add": {"X-Via": "gw"}, "remove": ["X-Drop"]},
                    }
                },
            ),
            http_route(
                "rewrite-uri.test", {"proxy-rewrite": {"uri": "/echo/fixed?src=gw", "headers": {"X-Flat": "1"}}}
            ),
            http_route(
                "response.test",
                {
                    "response-rewrite": {
                        "status_code": 203,
                        "body": "rewritten",
                        "headers": {
                            "set": {"X-Was": "$status", "Content-Type": "text/plain"},
                            "remove": ["X-Served-By"],
                        },
                    }
                },
            ),
            http_route(
                "response-vars.test",
                {
                    **KEY_AUTH,
                    "response-rewrite": {
                        "vars": [["status", "in", [401, 404]]],
                        "body": '{"message":"see the docs"}',
                        "headers": {"set": {"Content-Type": "application/json"}},
                    },
                },
            ),
            http_route("cors.test", {"cors": CORS, **KEY_AUTH}),
            http_route("rid.test", {"request-id": {}}),
            http_route("redirect.test", {"redirect": {"http_to_https": True}}),
            http_route("redirect-uri.test", {"redirect": {"uri": "/new$uri", "ret_code": 307}}),
            http_route("fault.test", {"fault-injection": ABORT_ON_ARG}),
            http_route("delay.test", {"fault-injection": {"delay": {"duration": 0.2}}}),
            http_route("cache.test", {"proxy-cache": {"cache_ttl": 60, "cache_bypass": ["$arg_bypass"]}}),
            grpc_route(
                "rewrite.grpc",
                {
                    "proxy-rewrite": {
                        "regex_uri": [
                            "^/v1/legacy/shelf/(\\d+)$",
                            "/v1/shelves/$1",
                            "^/v1/meta$",
                            "/v1/debug/metadata",
                        ],
                        "headers": {"set": {"X-Tenant": "acme"}},
                    }
                },
            ),
            grpc_route("method.grpc", {"proxy-rewrite": {"method": "DELETE"}}),
            grpc_route(
                "response.grpc",
                {
                    "response-rewrite": {
                        "vars": [["status", "==", 404]],
                        "status_code": 410,
                        "body": '{"message":"gone"}',
                        "headers": {"set": {"X-Rewritten": "yes"}},
                    }
                },
            ),
            grpc_route("cors.grpc", {"cors": CORS, **KEY_AUTH}),
            grpc_route("rid.grpc", {"request-id": {}}),
            grpc_route("redirect.grpc", {"redirect": {"regex_uri": ["^/v1/old-shelves$", "/v1/shelves"]}}),
            grpc_route("fault.grpc", {"fault-injection": ABORT_ON_ARG}),
            grpc_route("cache.grpc", {"proxy-cache": {}}),
        ],
    }
    path = tmp_path_factory.mktemp("transform") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        gateway: Gateway = start_gateway(path)
    except BaseException:
        upstream.stop()
        raise
    yield Client(gateway)
    gateway.process.stop()
    upstream.stop()


def get(client: Client, host: str, path: str = "/echo", **headers: str) -> tuple[int, Any, Any]:
    return client.get(path, headers={"Host": host, **headers})


def seen_headers(body: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# proxy-rewrite


def test_proxy_rewrite_path_method_host_and_headers_reach_the_upstream(client: Client) -> None:
    status, _, body = get(client, "rewrite.test", "/old/a/b?tenant=t1", **{"X-Drop": "secret"})
    assert status == 200
    assert body["method"] == "PUT"
    assert body["path"] == "/echo/new/a/b?tenant=t1"
    seen = seen_headers(body)
    assert seen["host"] == ["backend.internal"]
    assert seen["x-tenant"] == ["t1"] and seen["x-via"] == ["gw"]
    assert "x-drop" not in seen


def test_proxy_rewrite_uri_query_joins_the_clients(client: Client) -> None:
    status, _, body = get(client, "rewrite-uri.test", "/anything?q=1")
    assert status == 200
    assert body["path"] == "/echo/fixed?src=gw&q=1"
    assert seen_headers(body)["x-flat"] == ["1"]


def test_proxy_rewrite_on_grpc_changes_which_http_rule_matches(client: Client) -> None:
    status, _, body = get(client, "rewrite.grpc", "/v1/legacy/shelf/1")
    assert status == 200 and body["theme"] == "Fiction"
    status, _, body = get(client, "rewrite.grpc", "/v1/meta")
    assert status == 200
    assert body["metadata"]["x-tenant"] == "acme"


def test_proxy_rewrite_method_on_grpc_picks_the_delete_rule(client: Client) -> None:
    # GET /v1/shelves/999 rewritten to DELETE: the DeleteShelf rule answers (NOT_FOUND for a missing shelf).
    status, _, body = get(client, "method.grpc", "/v1/shelves/999")
    assert status == 404 and "999" in body["message"]


# response-rewrite


def test_response_rewrite_replaces_status_headers_and_body(client: Client) -> None:
    status, headers, body = get(client, "response.test")
    assert status == 203
    assert body == b"rewritten"
    assert headers["X-Was"] == "200"
    assert headers["X-Served-By"] is None


def test_response_rewrite_vars_on_upstream_and_gateway_answers(client: Client) -> None:
    status, _, body = get(client, "response-vars.test", "/echo", apikey="ann-key")
    assert status == 200 and body["method"] == "GET"
    status, _, body = get(client, "response-vars.test", "/status/404", apikey="ann-key")
    assert (status, body) == (404, {"message": "see the docs"})
    status, _, body = get(client, "response-vars.test", "/echo")  # key-auth refuses: a gateway answer
    assert (status, body) == (401, {"message": "see the docs"})


def test_response_rewrite_on_grpc_error_answer(client: Client) -> None:
    status, headers, body = get(client, "response.grpc", "/v1/shelves/999")
    assert (status, body, headers["X-Rewritten"]) == (410, {"message": "gone"}, "yes")
    status, headers, body = get(client, "response.grpc", "/v1/shelves/1")
    assert status == 200 and body["theme"] == "Fiction" and headers["X-Rewritten"] is None


# cors


@pytest.mark.parametrize("host", ["cors.test", "cors.grpc"])
def test_cors_preflight_is_answered_without_auth_or_upstream(client: Client, host: str) -> None:
    status, headers, body = client.request(
        "OPTIONS",
        "/v1/shelves",
        headers={"Host": host, "Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert status == 200 and body == b""
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert headers["Access-Control-Allow-Headers"] == "apikey"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == "Origin"
    assert headers["X-Served-By"] is None


@pytest.mark.parametrize(("host", "path"), [("cors.test", "/echo"), ("cors.grpc", "/v1/shelves/1")])
def test_cors_headers_on_answers_and_refusals(client: Client, host: str, path: str) -> None:
    status, headers, _ = get(client, host, path, Origin=ORIGIN, apikey="ann-key")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = get(client, host, path, Origin=ORIGIN)
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN  # the browser can read the 401
    status, headers, _ = get(client, host, path, Origin="https://evil.example", apikey="ann-key")
    assert status == 200 and headers["Access-Control-Allow-Origin"] is None


# request-id


def test_request_id_generated_passed_upstream_and_echoed(client: Client) -> None:
    status, headers, body = get(client, "rid.test")
    assert status == 200
    sent = seen_headers(body)["x-request-id"]
    assert sent == [headers["X-Request-Id"]] and len(sent[0]) == 36
    _, headers, body = get(client, "rid.test", **{"X-Request-Id": "client-id-1"})
    assert seen_headers(body)["x-request-id"] == ["client-id-1"] and headers["X-Request-Id"] == "client-id-1"
    _, headers, _ = get(client, "rid.test", **{"X-Request-Id": "x" * 200})
    assert len(headers["X-Request-Id"]) == 36


def test_request_id_reaches_grpc_as_metadata(client: Client) -> None:
    status, headers, body = get(client, "rid.grpc", "/v1/debug/metadata")
    assert status == 200
    assert body["metadata"]["x-request-id"] == headers["X-Request-Id"]


# redirect


def test_redirect_http_to_https_and_uri(client: Client) -> None:
    status, headers, _ = get(client, "redirect.test", "/a/b?x=1")
    assert (status, headers["Location"]) == (301, "https://redirect.test/a/b?x=1")
    status, headers, _ = get(client, "redirect-uri.test", "/a")
    assert (status, headers["Location"]) == (307, "/new/a")


def test_redirect_regex_on_grpc_route(client: Client) -> None:
    status, headers, _ = get(client, "redirect.grpc", "/v1/old-shelves")
    assert (status, headers["Location"]) == (302, "/v1/shelves")
    status, _, body = get(client, "redirect.grpc", "/v1/shelves/2")
    assert status == 200 and body["theme"] == "Poetry"


# fault-injection


@pytest.mark.parametrize(("host", "path"), [("fault.test", "/echo"), ("fault.grpc", "/v1/shelves/1")])
def test_fault_injection_abort_by_vars(client: Client, host: str, path: str) -> None:
    status, _, body = get(client, host, f"{path}?fault=1&who=qa")
    assert (status, body) == (418, b"fault for qa")
    status, _, _ = get(client, host, path)
    assert status == 200


def test_fault_injection_delay(client: Client) -> None:
    started = time.monotonic()
    status, _, _ = get(client, "delay.test")
    assert status == 200 and time.monotonic() - started >= 0.2


# proxy-cache


def test_proxy_cache_miss_then_hit_then_bypass_on_http(client: Client) -> None:
    status, headers, first = get(client, "cache.test", "/echo?n=http")
    assert (status, headers["Cache-Status"]) == (200, "MISS")
    status, headers, again = get(client, "cache.test", "/echo?n=http")
    assert (status, headers["Cache-Status"], headers["Apisix-Cache-Status"]) == (200, "HIT", "HIT")
    assert again == first  # the echo's peer port would differ on a second upstream call
    # Without cache_control a client's no-cache is ignored, as in APISIX; cache_bypass is the operator's lever.
    _, headers, _ = get(client, "cache.test", "/echo?n=http", **{"Cache-Control": "no-cache"})
    assert headers["Cache-Status"] == "HIT"
    _, headers, _ = get(client, "cache.test", "/echo?n=http&bypass=1")
    assert headers["Cache-Status"] == "BYPASS"
    _, headers, _ = get(client, "cache.test", "/status/500?n=http")
    assert headers["Cache-Status"] == "MISS"
    _, headers, _ = get(client, "cache.test", "/status/500?n=http")
    assert headers["Cache-Status"] == "MISS"


def test_proxy_cache_on_grpc_route(client: Client) -> None:
    status, headers, first = get(client, "cache.grpc", "/v1/shelves/1")
    assert (status, headers["Cache-Status"]) == (200, "MISS")
    status, headers, again = get(client, "cache.grpc", "/v1/shelves/1")
    assert (status, headers["Cache-Status"]) == (200, "HIT")
    assert again == first and headers["Content-Type"] == "application/json"
