"""End to end: the real gateway process as a plain HTTP reverse proxy in front of real upstream processes."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from gateway_harness import Gateway, start_gateway
from processes import BIN, REPO, Process, start

UPSTREAM_SCRIPT = REPO / "tests" / "servers" / "http_upstream.py"
READ_TIMEOUT = 0.5
LIMIT = 8 * 1024 * 1024
SMALL_LIMIT = 1024


def start_upstream(name: str) -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(UPSTREAM_SCRIPT), "--port", "0", "--name", name])
    try:
        line = process.wait_for("http upstream listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    gateway: Gateway
    port_a: int
    port_b: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One gateway for the module; routes are told apart by Host, each with its own upstream."""
    (a, port_a), (b, port_b) = start_upstream("a"), start_upstream("b")
    timeout = {"connect": 0.5, "read": READ_TIMEOUT}

    def upstream(id_: str, nodes: dict[str, int], **extra: Any) -> dict[str, Any]:
        return {"id": id_, "scheme": "http", "nodes": nodes, "timeout": timeout, **extra}

    def route(id_: str, upstream_id: str, host: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": id_, "uri": "/*", "upstream_id": upstream_id, **({"host": host} if host else {}), **extra}

    config = {
        "gateway": {"client_max_body_size": LIMIT},
        "upstreams": [
            upstream("main", {f"127.0.0.1:{port_a}": 1}),
            upstream("node", {f"127.0.0.1:{port_a}": 1}, pass_host="node"),
            upstream("down", {f"127.0.0.1:{closed_port()}": 1}),
            upstream("wrr", {f"127.0.0.1:{port_a}": 3, f"127.0.0.1:{port_b}": 1}),
            upstream("flaky", {f"127.0.0.1:{closed_port()}": 1, f"127.0.0.1:{port_b}": 1}),
        ],
        "routes": [
            route("main", "main"),
            route("node", "node", host="node.test"),
            route("small", "main", host="small.test", max_body_size=SMALL_LIMIT),
            route("down", "down", host="down.test"),
            route("wrr", "wrr", host="wrr.test"),
            route("flaky", "flaky", host="flaky.test"),
        ],
    }
    path = tmp_path_factory.mktemp("http-proxy") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        gateway = start_gateway(path)
    except BaseException:
        a.stop()
        b.stop()
        raise
    yield Setup(gateway, port_a, port_b)
    gateway.process.stop()
    a.stop()
    b.stop()


@pytest.fixture
def gateway(setup: Setup) -> Gateway:
    return setup.gateway


class Raw:
    """One client connection that sends bytes exactly as written and parses answers with http.client."""

    def __init__(self, gateway: Gateway, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((gateway.host, gateway.port), timeout=timeout)

    def send(self, head: str, body: bytes = b"") -> None:
        self.sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self.sock, method=method)
        response.begin()
        return response

    def close(self) -> None:
        self.sock.close()


def exchange(
    gateway: Gateway, head: str, body: bytes = b"", method: str = "GET"
) -> tuple[int, list[tuple[str, str]], bytes]:
    raw = Raw(gateway)
    try:
        raw.send(head, body)
        response = raw.response(method)
        return response.status, response.getheaders(), response.read()
    finally:
        raw.close()


def echo(gateway: Gateway, head: str, body: bytes = b"") -> dict[str, Any]:
    status, _, data = exchange(gateway, head, body)
    assert status == 200, data
    result: dict[str, Any] = json.loads(data)
    return result


def names(headers: list[list[str]] | list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers]


def values(headers: list[list[str]] | list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def assert_status_body(data: bytes, code: int) -> None:
    body = json.loads(data)
    assert body["code"] == code and body["message"] and body["details"] == []


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


# --- request line and body ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_path_query_and_body_pass_through(gateway: Gateway, method: str) -> None:
    body = b'{"k": "v \xc3\xa9"}' if method in ("POST", "PUT", "PATCH") else b""
    length = f"Content-Length: {len(body)}\n" if body else ""
    target = "/echo/a%2Fb/%3B%20x;p=1/caf%C3%A9?q=%41+b&x=1&x=2&empty=&enc=%2F%26"
    seen = echo(gateway, f"{method} {target} HTTP/1.1\nHost: example.test\n{length}", body)
    assert seen["method"] == method
    assert seen["path"] == target
    assert seen["body"].encode() == body


def test_path_is_normalised_once_before_proxying(gateway: Gateway) -> None:
    seen = echo(gateway, "GET //x/../echo/./a//b/%7Euser?p=/../q HTTP/1.1\nHost: example.test\n")
    assert seen["path"] == "/echo/a/b/~user?p=/../q"  # the query is never touched


def test_request_headers_reach_upstream_exactly(gateway: Gateway) -> None:
    head = (
        "GET /echo HTTP/1.1\nHost: example.test\nX-Multi: 1\nX-Multi: 2\nAccept: text/plain\n"
        "Cookie: a=1\nAuthorization: Bearer t\nX-Utf8: caf\xc3\xa9\n"
    )
    seen = echo(gateway, head)
    added = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
    sent = [(n.lower(), v) for n, v in seen["headers"] if n.lower() not in added]
    # nothing dropped, nothing added by the HTTP client (User-Agent, Accept-Encoding, Content-Length, ...)
    assert sorted(sent) == sorted(
        [
            ("host", "example.test"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("accept", "text/plain"),
            ("cookie", "a=1"),
            ("authorization", "Bearer t"),
            ("x-utf8", "caf\xc3\xa9"),
        ]
    )
    assert values(seen["headers"], "X-Multi") == ["1", "2"]  # order kept


def test_body_framing_content_length_kept(gateway: Gateway) -> None:
    seen = echo(gateway, "POST /echo HTTP/1.1\nHost: example.test\nContent-Length: 5\n", b"hello")
    assert values(seen["headers"], "Content-Length") == ["5"]
    assert "transfer-encoding" not in names(seen["headers"])
    assert seen["body"] == "hello"


def test_body_framing_chunked_upload(gateway: Gateway) -> None:
    head = "POST /echo HTTP/1.1\nHost: example.test\nTransfer-Encoding: chunked\n"
    seen = echo(gateway, head, chunked(b"hello world", size=4))
    assert seen["body"] == "hello world"
    assert "content-length" not in names(seen["headers"]) or values(seen["headers"], "Content-Length") == ["11"]


def test_empty_post_stays_empty(gateway: Gateway) -> None:
    seen = echo(gateway, "POST /echo HTTP/1.1\nHost: example.test\nContent-Length: 0\n")
    assert seen["body_length"] == 0
    assert values(seen["headers"], "Content-Length") == ["0"]


def test_post_without_body_headers_stays_empty(gateway: Gateway) -> None:
    seen = echo(gateway, "POST /echo HTTP/1.1\nHost: example.test\n")
    assert seen["body_length"] == 0
    assert values(seen["headers"], "Content-Length") in ([], ["0"])
    assert "transfer-encoding" not in names(seen["headers"])


def test_expect_100_continue_is_answered_by_the_gateway(gateway: Gateway) -> None:
    raw = Raw(gateway)
    try:
        raw.send("POST /echo HTTP/1.1\nHost: example.test\nContent-Length: 4\nExpect: 100-continue\n")
        assert raw.sock.recv(64).startswith(b"HTTP/1.1 100")
        raw.sock.sendall(b"ping")
        response = raw.response()
        seen = json.loads(response.read())
    finally:
        raw.close()
    assert seen["body"] == "ping"
    assert "expect" not in names(seen["headers"])  # 100-continue was settled on the client's hop


# --- hop-by-hop and forwarding headers ---------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_stripped(gateway: Gateway) -> None:
    head = (
        "GET /echo HTTP/1.1\nHost: example.test\nConnection: keep-alive, X-Drop-Me\nX-Drop-Me: secret\n"
        "Keep-Alive: timeout=300\nTE: trailers\nTrailer: X-T\nUpgrade: h2c\nProxy-Authorization: Basic eDp5\n"
        "Proxy-Connection: keep-alive\nX-Keep: 1\n"
    )
    seen = echo(gateway, head)
    got = set(names(seen["headers"]))
    assert "x-keep" in got
    hop = {"connection", "x-drop-me", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"}
    assert not got & (hop | {"proxy-connection"})


def test_client_connection_header_never_strips_what_the_gateway_sets(gateway: Gateway) -> None:
    head = (
        "GET /echo HTTP/1.1\nHost: example.test\n"
        "Connection: X-Forwarded-For, X-Real-IP, x-forwarded-proto, X-Forwarded-Host, Host\n"
        "X-Forwarded-For: 203.0.113.9\n"
    )
    seen = echo(gateway, head)
    headers = seen["headers"]
    assert values(headers, "X-Forwarded-For")[-1].endswith("127.0.0.1")
    assert values(headers, "X-Real-IP") == ["127.0.0.1"]
    assert values(headers, "X-Forwarded-Proto") == ["http"]
    assert values(headers, "X-Forwarded-Host") == ["example.test"]
    assert values(headers, "Host") == ["example.test"]


def test_forwarded_for_is_appended_and_the_rest_set_by_the_gateway(gateway: Gateway) -> None:
    head = (
        "GET /echo HTTP/1.1\nHost: example.test:8080\nX-Forwarded-For: 203.0.113.9\nx-forwarded-for: 10.0.0.1\n"
        "X-Real-IP: 6.6.6.6\nX-Forwarded-Proto: https\nX-Forwarded-Host: evil.test\n"
    )
    headers = echo(gateway, head)["headers"]
    assert values(headers, "X-Forwarded-For") == ["203.0.113.9, 10.0.0.1, 127.0.0.1"]
    assert values(headers, "X-Real-IP") == ["127.0.0.1"]
    assert values(headers, "X-Forwarded-Proto") == ["http"]
    assert values(headers, "X-Forwarded-Host") == ["example.test:8080"]


def test_forwarded_for_starts_with_the_peer(gateway: Gateway) -> None:
    headers = echo(gateway, "GET /echo HTTP/1.1\nHost: example.test\n")["headers"]
    assert values(headers, "X-Forwarded-For") == ["127.0.0.1"]


def test_underscore_header_names_are_dropped(gateway: Gateway) -> None:
    head = "GET /echo HTTP/1.1\nHost: example.test\nX_Real_IP: 6.6.6.6\nX_Forwarded_For: 6.6.6.6\nX_Custom: 1\n"
    got = names(echo(gateway, head)["headers"])
    assert not [name for name in got if "_" in name]


def test_pass_host_pass_keeps_the_client_host(gateway: Gateway) -> None:
    headers = echo(gateway, "GET /echo HTTP/1.1\nHost: Example.TEST:8080\n")["headers"]
    assert values(headers, "Host") == ["Example.TEST:8080"]


def test_pass_host_node_rewrites_host(setup: Setup) -> None:
    headers = echo(setup.gateway, "GET /echo HTTP/1.1\nHost: node.test\n")["headers"]
    assert values(headers, "Host") == [f"127.0.0.1:{setup.port_a}"]
    assert values(headers, "X-Forwarded-Host") == ["node.test"]


def test_hop_by_hop_response_headers_are_stripped_and_repeats_kept(gateway: Gateway) -> None:
    status, headers, body = exchange(gateway, "GET /set-headers HTTP/1.1\nHost: example.test\n")
    assert status == 200 and body == b"headers set"
    assert values(headers, "Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert values(headers, "X-Repeated") == ["one", "two"]
    assert values(headers, "X-Kept") == ["yes"]
    got = set(names(headers))
    assert not got & {"x-secret", "keep-alive", "trailer", "upgrade", "proxy-authenticate", "proxy-connection"}
    assert all(value.lower() in ("keep-alive", "close") for value in values(headers, "Connection"))


# --- statuses ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 202, 301, 400, 401, 404, 418, 429, 500, 503, 599])
def test_status_and_body_are_the_upstreams(gateway: Gateway, code: int) -> None:
    status, headers, body = exchange(gateway, f"GET /status/{code} HTTP/1.1\nHost: example.test\n")
    assert status == code
    assert body == f"upstream says {code}".encode()  # for 404 too: the upstream's body, not the gateway's JSON
    assert values(headers, "X-Upstream-Status") == [str(code)]
    assert values(headers, "Content-Type") == ["text/plain; charset=utf-8"]


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses_keep_the_connection_usable(gateway: Gateway, code: int) -> None:
    raw = Raw(gateway)
    try:
        raw.send(f'GET /status/{code} HTTP/1.1\nHost: example.test\nIf-None-Match: "v1"\n')
        first = raw.response()
        assert first.status == code and first.read() == b""
        assert first.getheader("ETag") == '"v1"'
        raw.send("GET /status/200 HTTP/1.1\nHost: example.test\n")  # stray body bytes would break this one
        second = raw.response()
        assert second.status == 200 and second.read() == b"upstream says 200"
    finally:
        raw.close()


def test_redirects_are_not_followed(gateway: Gateway) -> None:
    status, headers, body = exchange(gateway, "GET /redirect HTTP/1.1\nHost: example.test\n")
    assert status == 302
    assert values(headers, "Location") == ["/echo?redirected=1"]
    assert body == b"go elsewhere"


def test_head_has_headers_and_no_body(gateway: Gateway) -> None:
    raw = Raw(gateway)
    try:
        raw.send("HEAD /big?bytes=1000 HTTP/1.1\nHost: example.test\n")
        head = raw.response("HEAD")
        assert head.status == 200 and head.getheader("Content-Length") == "1000" and head.read() == b""
        raw.send("HEAD /echo HTTP/1.1\nHost: example.test\n")
        echoed = raw.response("HEAD")
        assert echoed.status == 200 and echoed.getheader("X-Echo-Method") == "HEAD" and echoed.read() == b""
        raw.send("GET /big?bytes=10 HTTP/1.1\nHost: example.test\n")
        after = raw.response()
        assert after.status == 200 and len(after.read()) == 10
    finally:
        raw.close()


# --- streaming and size ------------------------------------------------------------------------------------------


def test_streaming_response_is_relayed_as_it_comes(gateway: Gateway) -> None:
    raw = Raw(gateway)
    try:
        started = time.monotonic()
        raw.send("GET /stream?chunks=3&delay_ms=300 HTTP/1.1\nHost: example.test\n")
        response = raw.response()
        assert response.getheader("Transfer-Encoding") == "chunked"
        first = response.read1()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    finally:
        raw.close()
    assert first + rest == b"chunk 0\nchunk 1\nchunk 2\n"
    assert first.startswith(b"chunk 0\n") and first_at < 0.25 < 0.55 < total


def test_large_bodies_both_ways(gateway: Gateway) -> None:
    upload = bytes(range(256)) * (4 * 4096)  # 4 MiB
    seen = echo(gateway, f"POST /echo HTTP/1.1\nHost: example.test\nContent-Length: {len(upload)}\n", upload)
    assert seen["body_length"] == len(upload)
    assert seen["body_sha256"] == hashlib.sha256(upload).hexdigest()
    status, headers, body = exchange(gateway, f"GET /big?bytes={5 * 1024 * 1024} HTTP/1.1\nHost: example.test\n")
    assert status == 200 and values(headers, "Content-Length") == [str(5 * 1024 * 1024)]
    block = bytes(range(256)) * 64
    assert body == (block * (len(body) // len(block) + 1))[: 5 * 1024 * 1024]


def test_large_chunked_upload(gateway: Gateway) -> None:
    upload = bytes(range(256)) * (3 * 4096)  # 3 MiB
    head = "POST /echo HTTP/1.1\nHost: example.test\nTransfer-Encoding: chunked\n"
    seen = echo(gateway, head, chunked(upload))
    assert seen["body_sha256"] == hashlib.sha256(upload).hexdigest()


def test_body_over_the_route_limit_with_content_length_is_413(gateway: Gateway) -> None:
    body = b"x" * (SMALL_LIMIT + 1)
    status, _, data = exchange(gateway, f"POST /echo HTTP/1.1\nHost: small.test\nContent-Length: {len(body)}\n", body)
    assert status == 413
    assert_status_body(data, 11)


def test_body_over_the_route_limit_chunked_is_413(gateway: Gateway) -> None:
    body = b"x" * (SMALL_LIMIT * 3)
    status, _, data = exchange(
        gateway, "POST /echo HTTP/1.1\nHost: small.test\nTransfer-Encoding: chunked\n", chunked(body, 512)
    )
    assert status == 413
    assert_status_body(data, 11)


def test_body_at_the_route_limit_passes(gateway: Gateway) -> None:
    body = b"x" * SMALL_LIMIT
    seen = echo(gateway, "POST /echo HTTP/1.1\nHost: small.test\nTransfer-Encoding: chunked\n", chunked(body, 100))
    assert seen["body_length"] == SMALL_LIMIT


# --- upstream faults ---------------------------------------------------------------------------------------------


def test_upstream_refusing_connections_is_502_fast(gateway: Gateway) -> None:
    started = time.monotonic()
    status, headers, data = exchange(gateway, "GET /echo HTTP/1.1\nHost: down.test\n")
    assert status == 502 and time.monotonic() - started < 0.5
    assert values(headers, "Content-Type")[0].startswith("application/json")
    assert_status_body(data, 14)


def test_upstream_slow_before_headers_is_504_at_the_read_timeout(gateway: Gateway) -> None:
    started = time.monotonic()
    status, headers, data = exchange(gateway, "GET /slow?ms=3000 HTTP/1.1\nHost: example.test\n")
    elapsed = time.monotonic() - started
    assert status == 504 and READ_TIMEOUT * 0.9 < elapsed < READ_TIMEOUT + 0.5
    assert values(headers, "Content-Type")[0].startswith("application/json")
    assert_status_body(data, 4)


def test_upstream_just_under_the_read_timeout_is_fine(gateway: Gateway) -> None:
    status, _, data = exchange(gateway, "GET /slow?ms=200 HTTP/1.1\nHost: example.test\n")
    assert status == 200 and data == b"slow done"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upstream_stalling_mid_body_cuts_the_client_connection(gateway: Gateway, framing: str) -> None:
    query = "?chunked=1" if framing == "chunked" else ""
    raw = Raw(gateway)
    try:
        started = time.monotonic()
        raw.send(f"GET /slow-body{query} HTTP/1.1\nHost: example.test\n")
        response = raw.response()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as incomplete:
            response.read()
        elapsed = time.monotonic() - started
        assert raw.sock.recv(1024) == b""  # closed: nothing more, in particular no second status line
    finally:
        raw.close()
    assert incomplete.value.partial == b"x" * 100
    assert elapsed < READ_TIMEOUT + 1.0


def test_weighted_round_robin_follows_the_weights(gateway: Gateway) -> None:
    served = [echo(gateway, "GET /echo HTTP/1.1\nHost: wrr.test\n")["server"] for _ in range(8)]
    assert served.count("a") == 6 and served.count("b") == 2
    assert served[:4].count("b") == 1  # smooth: not a burst of a then a burst of b


def test_upstream_dropping_the_connection_mid_body_cuts_the_client_connection(gateway: Gateway) -> None:
    raw = Raw(gateway)
    try:
        raw.send("GET /truncated HTTP/1.1\nHost: example.test\n")
        response = raw.response()
        assert response.status == 200 and response.getheader("Content-Length") == "1000"
        with pytest.raises(http.client.IncompleteRead) as incomplete:
            response.read()
        assert raw.sock.recv(1024) == b""
    finally:
        raw.close()
    assert incomplete.value.partial == b"x" * 100


def test_client_leaving_mid_stream_leaves_the_gateway_serving(gateway: Gateway) -> None:
    raw = Raw(gateway)
    raw.send("GET /stream?chunks=20&delay_ms=20 HTTP/1.1\nHost: example.test\n")
    assert raw.response().status == 200
    raw.close()
    time.sleep(0.1)
    assert echo(gateway, "GET /echo HTTP/1.1\nHost: example.test\n")["method"] == "GET"


def test_a_refusing_node_is_skipped_for_another(gateway: Gateway) -> None:
    # nothing reached the refusing node, so even a POST may go to the next one (APISIX's retries)
    for _ in range(4):
        seen = echo(gateway, "POST /echo HTTP/1.1\nHost: flaky.test\nContent-Length: 4\n", b"ping")
        assert seen["server"] == "b" and seen["body"] == "ping"
