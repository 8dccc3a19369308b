"""APISIX conformance, end to end: the answers a user coming from APISIX 3 compares, on a real gateway process.

Each test names the APISIX behaviour it checks; where protogate deliberately differs, the test says so and
docs/plugins.md says why.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from gateway_harness import Client, Gateway, gateway_with_http_upstream

SECRET = "a-secret-of-at-least-32-bytes-ok!"
ROSE_BASIC = {"username": "rose", "password": "r"}


class LogReceiver:
    """A log collector for http-logger: records each POST body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def route(host: str, plugins: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": host, "uri": "/*", "host": host, "upstream_id": "echo", "plugins": plugins, **extra}


def config(port: int, log_url: str) -> dict[str, Any]:
    return {
        "upstreams": [{"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{port}": 1}}],
        "services": [{"id": "svc", "upstream_id": "echo"}],
        "consumers": [
            {
                "username": "jack",
                "plugins": {"key-auth": {"key": "jack-key"}, "jwt-auth": {"key": "jk", "secret": SECRET}},
            },
            {
                "username": "rose",
                "plugins": {"key-auth": {"key": "rose-key"}, "basic-auth": {"username": "rose", "password": "r"}},
            },
            {"username": "anonymous"},
        ],
        "routes": [
            route("key.test", {"key-auth": {}}),
            route("key-anon.test", {"key-auth": {"anonymous_consumer": "anonymous", "hide_credentials": True}}),
            route("key-ghost.test", {"key-auth": {"anonymous_consumer": "ghost"}}),
            route("basic-realm.test", {"basic-auth": {"realm": "staff"}}),
            route("jwt-exp.test", {"jwt-auth": {"claims_to_verify": ["exp"]}}),
            route("jwt-anon.test", {"jwt-auth": {"anonymous_consumer": "anonymous"}}),
            route(
                "both-lists.test",
                {"key-auth": {}, "consumer-restriction": {"whitelist": ["jack", "rose"], "blacklist": ["rose"]}},
            ),
            {
                "id": "by-service",
                "uri": "/*",
                "host": "service.test",
                "service_id": "svc",
                "plugins": {"consumer-restriction": {"type": "service_id", "blacklist": ["svc"], "rejected_code": 451}},
            },
            route(
                "rewrite.test",
                {
                    "proxy-rewrite": {
                        "regex_uri": ["^/user/(\\d+)/(.*)$", "/echo/$2"],
                        "headers": {
                            "set": {"X-User-Id": "$1", "X-Tag": ["a", "b"], "X-Who": "${http_x_user ?? nobody}"},
                        },
                    }
                },
            ),
            route(
                "filters.test",
                {"response-rewrite": {"filters": [{"regex": "upstream says (\\d+)", "replace": "status $1 seen"}]}},
            ),
            route(
                "cors.test",
                {"cors": {"allow_origins": "https://app.example", "timing_allow_origins": "https://perf.example"}},
            ),
            route("rid7.test", {"request-id": {"algorithm": "uuidv7"}}),
            route("ksuid.test", {"request-id": {"algorithm": "ksuid"}}),
            route("rid-upstream.test", {"request-id": {"header_name": "X-Served-By"}}),
            route("https.test", {"redirect": {"http_to_https": True}}),
            route("fault.test", {"fault-injection": {"abort": {"http_status": 429, "headers": {"Retry-After": 7}}}}),
            route("cache.test", {"proxy-cache": {}}),
            route("cache-key.test", {"key-auth": {}, "proxy-cache": {}}),
            route(
                "split.test",
                {"traffic-split": {"rules": [{"match": [{"vars": [["arg_canary", "==", "1"]]}]}]}},
            ),
            route(
                "breaker.test",
                {
                    "api-breaker": {
                        "break_response_code": 502,
                        "break_response_body": "open",
                        "break_response_headers": [{"key": "X-Breaker-Route", "value": "$route_id"}],
                        "unhealthy": {"failures": 1},
                    }
                },
            ),
            route(
                "logged.test",
                {
                    "http-logger": {
                        "uri": log_url,
                        "batch_max_size": 1,
                        "log_format": {"host": "$host", "who": "$consumer_name", "req": {"method": "$request_method"}},
                    }
                },
            ),
        ],
    }


@pytest.fixture(scope="module")
def logs() -> Iterator[LogReceiver]:
    receiver = LogReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, logs: LogReceiver) -> Iterator[Gateway]:
    with gateway_with_http_upstream(
        tmp_path_factory.mktemp("apisix-conformance"), "conformance", lambda port: config(port, logs.url)
    ) as gateway:
        yield gateway


@pytest.fixture
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def call(client: Client, host: str, path: str = "/echo", method: str = "GET", **headers: str) -> tuple[int, Any, Any]:
    return client.request(method, path, headers={"Host": host, **headers})


def seen(body: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in body["headers"] if key.lower() == name.lower()]


# authentication: messages, WWW-Authenticate realms, anonymous consumers


def test_key_auth_messages_and_apikey_challenge(client: Client) -> None:
    status, headers, body = call(client, "key.test")
    assert (status, body["message"], headers["WWW-Authenticate"]) == (
        401,
        "Missing API key in request",
        'apikey realm="key"',
    )
    status, _, body = call(client, "key.test", apikey="nope")
    assert (status, body["message"]) == (401, "Invalid API key in request")
    status, _, body = call(client, "key.test", "/echo?apikey=jack-key")
    assert status == 200 and seen(body, "X-Consumer-Username") == ["jack"]


def test_key_auth_anonymous_consumer_takes_a_wrong_key_and_hides_it(client: Client) -> None:
    status, _, body = call(client, "key-anon.test", "/echo?apikey=wrong&a=1", apikey="wrong")
    assert status == 200
    assert seen(body, "X-Consumer-Username") == ["anonymous"]
    assert seen(body, "apikey") == [] and body["path"] == "/echo?a=1"
    status, _, body = call(client, "key-ghost.test")
    assert (status, body["message"]) == (401, "Invalid user authorization")


def test_basic_auth_realm(client: Client) -> None:
    status, headers, _ = call(client, "basic-realm.test")
    assert (status, headers["WWW-Authenticate"]) == (401, 'Basic realm="staff"')


def test_jwt_listed_claims_are_required_and_failures_fall_back_to_anonymous(client: Client) -> None:
    no_exp = jwt.encode({"key": "jk"}, SECRET, algorithm="HS256")
    status, headers, body = call(client, "jwt-exp.test", Authorization=f"Bearer {no_exp}")
    assert (status, body["message"], headers["WWW-Authenticate"]) == (401, "failed to verify jwt", 'Bearer realm="jwt"')
    good = jwt.encode({"key": "jk", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert call(client, "jwt-exp.test", Authorization=f"Bearer {good}")[0] == 200
    expired = jwt.encode({"key": "jk", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    status, _, body = call(client, "jwt-anon.test", Authorization=f"Bearer {expired}")
    assert status == 200 and seen(body, "X-Consumer-Username") == ["anonymous"]


def test_consumer_restriction_takes_both_lists_and_restricts_by_service(client: Client) -> None:
    assert call(client, "both-lists.test", apikey="jack-key")[0] == 200
    status, _, body = call(client, "both-lists.test", apikey="rose-key")
    assert (status, body["message"]) == (403, "The consumer_name is forbidden.")
    status, _, body = call(client, "service.test")
    assert (status, body["message"]) == (451, "The service_id is forbidden.")


# transforms


def test_proxy_rewrite_headers_read_regex_groups_lists_and_defaults(client: Client) -> None:
    status, _, body = call(client, "rewrite.test", "/user/42/orders")
    assert status == 200 and body["path"] == "/echo/orders"
    assert seen(body, "X-User-Id") == ["42"]
    assert seen(body, "X-Tag") == ["a", "b"]
    assert seen(body, "X-Who") == ["nobody"]


def test_response_rewrite_filters_the_upstream_body(client: Client) -> None:
    status, headers, body = call(client, "filters.test", "/status/201")
    assert (status, body) == (201, b"status 201 seen")
    assert headers["Content-Length"] == str(len(body)) and "ETag" not in headers


def test_cors_timing_allow_origin_and_a_plain_options_goes_upstream(client: Client) -> None:
    _, headers, _ = call(client, "cors.test", Origin="https://perf.example")
    assert headers["Timing-Allow-Origin"] == "https://perf.example"
    assert headers.get("Access-Control-Allow-Origin") is None
    # Deliberate: APISIX answers every OPTIONS itself; protogate only preflights (Origin and
    # Access-Control-Request-Method), so an API's own OPTIONS still reaches it.
    status, _, body = call(client, "cors.test", method="OPTIONS", Origin="https://app.example")
    assert status == 200 and body["method"] == "OPTIONS"
    status, headers, body = call(
        client, "cors.test", method="OPTIONS", Origin="https://app.example", **{"Access-Control-Request-Method": "PUT"}
    )
    assert (status, body, headers["Access-Control-Allow-Origin"]) == (200, b"", "https://app.example")


def test_request_id_algorithms_and_the_upstream_s_own_id(client: Client) -> None:
    _, headers, body = call(client, "rid7.test")
    assert uuid.UUID(headers["X-Request-Id"]).version == 7
    assert seen(body, "X-Request-Id") == [headers["X-Request-Id"]]
    _, headers, _ = call(client, "ksuid.test")
    assert re.fullmatch(r"[0-9A-Za-z]{27}", headers["X-Request-Id"])
    # The upstream answers with its own X-Served-By: APISIX keeps an id the answer already carries.
    _, headers, _ = call(client, "rid-upstream.test")
    assert headers["X-Served-By"] == "conformance"


def test_redirect_trusts_x_forwarded_proto(client: Client) -> None:
    status, headers, _ = call(client, "https.test", "/echo?b=1")
    assert (status, headers["Location"]) == (301, "https://https.test/echo?b=1")
    status, _, body = call(client, "https.test", "/echo", **{"X-Forwarded-Proto": "https"})
    assert status == 200 and body["path"] == "/echo"


def test_fault_injection_header_numbers(client: Client) -> None:
    status, headers, _ = call(client, "fault.test")
    assert (status, headers["Retry-After"]) == (429, "7")


# proxy-cache


def test_proxy_cache_purge_and_miss_for_other_methods(client: Client) -> None:
    assert call(client, "cache.test", "/echo?purge=1")[1]["Apisix-Cache-Status"] == "MISS"
    assert call(client, "cache.test", "/echo?purge=1")[1]["Apisix-Cache-Status"] == "HIT"
    status, _, _ = call(client, "cache.test", "/echo?purge=1", method="PURGE")
    assert status == 200
    assert call(client, "cache.test", "/echo?purge=1", method="PURGE")[0] == 404
    assert call(client, "cache.test", "/echo?purge=1")[1]["Apisix-Cache-Status"] == "MISS"
    assert call(client, "cache.test", "/echo?purge=1", method="DELETE")[1]["Apisix-Cache-Status"] == "MISS"


def test_proxy_cache_keeps_consumers_apart(client: Client) -> None:
    _, headers, jack = call(client, "cache-key.test", "/echo?who=1", apikey="jack-key")
    assert headers["Apisix-Cache-Status"] == "MISS"
    _, headers, rose = call(client, "cache-key.test", "/echo?who=1", apikey="rose-key")
    assert headers["Apisix-Cache-Status"] == "MISS"
    assert seen(rose, "X-Consumer-Username") == ["rose"]
    _, headers, again = call(client, "cache-key.test", "/echo?who=1", apikey="jack-key")
    assert headers["Apisix-Cache-Status"] == "HIT" and again == jack


# traffic, breaker and logs


def test_traffic_split_rule_without_weighted_upstreams_keeps_the_route_s(client: Client) -> None:
    status, _, body = call(client, "split.test", "/echo?canary=1")
    assert status == 200 and body["server"] == "conformance"


def test_api_breaker_header_values_use_variables(client: Client) -> None:
    assert call(client, "breaker.test", "/status/500")[0] == 500
    status, headers, body = call(client, "breaker.test", "/status/200")
    assert (status, body, headers["X-Breaker-Route"]) == (502, b"open", "breaker.test")


def test_http_logger_sends_a_batch_of_one_as_an_object_shaped_by_log_format(client: Client, logs: LogReceiver) -> None:
    call(client, "logged.test", "/echo")
    deadline = time.monotonic() + 10
    while not logs.bodies:
        assert time.monotonic() < deadline, "no log batch arrived"
        time.sleep(0.05)
    entry = json.loads(logs.bodies[0])
    assert entry == {
        "host": "logged.test",
        "who": None,
        "req": {"method": "GET"},
        "route_id": "logged.test",
        "service_id": "",
    }


def test_basic_auth_credentials_from_a_consumer_still_work(client: Client) -> None:
    # rose's basic-auth credential sits next to her key-auth one: one consumer, two ways in.
    token = base64.b64encode(b"rose:r").decode()
    assert call(client, "basic-realm.test", Authorization=f"Basic {token}")[0] == 200
