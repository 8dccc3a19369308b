"""The HTTP edge against hostile bytes (THREATS 6, 10-13): raw requests over a socket to the real gateway.

Choices pinned here:
- Ambiguous framing is refused by aiohttp's strict llhttp parser with 400, and the connection is closed.
  Duplicate Content-Length headers are refused even when the values are equal: RFC 9112 lets a
  server merge them, but refusing leaves no two parsers room to disagree.
- Header names with `_` are dropped (nginx's and APISIX's default), not refused: requests from clients
  that happen to send one still work, and no plugin or upstream ever sees the name.
- A head that is still incomplete after client_header_timeout gets 408 and a close; a connection that
  never sent a byte is closed without an answer (as nginx does). A body that stops arriving for
  client_body_timeout gets 408 and a close; the timeout runs between reads, not over the whole body.
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import Gateway, bookstore_config, start_backend, start_gateway

HEAD_TIMEOUT = 0.6
BODY_TIMEOUT = 0.6
LIMITS = {
    "max_uri_size": 1024,
    "max_header_size": 1024,
    "max_header_count": 20,
    "client_max_body_size": 1024,
    "client_header_timeout": HEAD_TIMEOUT,
    "client_body_timeout": BODY_TIMEOUT,
}


@pytest.fixture(scope="module")
def gateway(bookstore_descriptor_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway with small limits and short timeouts, in front of a backend of its own."""
    backend, port = start_backend()
    try:
        config = bookstore_config(bookstore_descriptor_set, port)
        config["gateway"] = LIMITS
        config["routes"][1]["max_body_size"] = "1m"  # room for deeply nested JSON on the auto-mapped route
        path = tmp_path_factory.mktemp("edge") / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = start_gateway(path)
        try:
            yield gateway
        finally:
            gateway.process.stop()
    finally:
        backend.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


def exchange(gateway: Gateway, *parts: bytes, pause: float = 0.0, wait: float = 2.0) -> tuple[list[Answer], bool]:
    """Send `parts` (with `pause` seconds between them), then read until the gateway closes or `wait` passes.

    Returns the answers and whether the gateway closed the connection. Sending stops as soon as the
    gateway answers or closes, so an early refusal is read rather than lost to a reset.
    """
    with socket.create_connection((gateway.host, gateway.port), timeout=wait) as sock:
        for index, part in enumerate(parts):
            if index and pause and select.select([sock], [], [], pause)[0]:
                break
            sock.sendall(part)
        raw, closed = _read_until_closed(sock, wait)
    return parse_answers(raw), closed


def _read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    deadline = time.monotonic() + wait
    raw = b""
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return raw, True
        if not chunk:
            return raw, True
        raw += chunk
    return raw, False


def parse_answers(raw: bytes) -> list[Answer]:
    answers = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, raw = raw.partition(b"\r\n\r\n") if not raw.startswith(b"\r\n") else (b"", b"", raw[2:])
                    break
                body, raw = body + raw[:size], raw[size + 2 :]
        else:
            length = int(headers.get("content-length", "0"))
            body, raw = raw[:length], raw[length:]
        answers.append(Answer(int(status_line.split(" ")[1]), headers, body))
    return answers


def request(target: str = "/v1/shelves", *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_refused(answers: list[Answer], closed: bool, status: int, code: int) -> dict[str, Any]:
    assert [a.status for a in answers] == [status], answers
    assert closed, "the gateway kept the connection open after a refusal"
    body = answers[0].json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]
    assert body["details"] == []
    return body


SMUGGLED = b'POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: 20\r\n\r\n{"theme":"smuggled"}'


@pytest.mark.parametrize(
    "raw",
    [
        # Content-Length and Transfer-Encoding together, with a second request hidden in the body
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity\r\n\r\n" + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        b"POST /v1/shelves HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        # bare LF / bare CR line endings
        b"GET /v1/shelves HTTP/1.1\nHost: gw\n\n" + SMUGGLED,
        b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\nX-A: 1\nX-B: 2\r\n\r\n" + SMUGGLED,
        b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\nX-A: 1\rX-B: 2\r\n\r\n" + SMUGGLED,
        # duplicate Host / Content-Length (equal values too), a Content-Length list
        b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\nHost: admin\r\n\r\n",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 60\r\n\r\n{}" + SMUGGLED,
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: +2\r\n\r\n{}",
        # obs-fold, and whitespace where a header name should start
        b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /v1/shelves HTTP/1.1\r\n Host: gw\r\n\r\n",
        # invalid chunk sizes and chunk framing
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1ffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
        # no Host in HTTP/1.1, a version llhttp does not know
        b"GET /v1/shelves HTTP/1.1\r\n\r\n",
        b"GET /v1/shelves HTTP/1.2\r\nHost: gw\r\n\r\n",
    ],
    ids=lambda raw: raw.split(b"\r\n\r\n")[0][-40:].decode("latin-1"),
)
def test_ambiguous_framing_is_400_and_closed(gateway: Gateway, raw: bytes) -> None:
    answers, closed = exchange(gateway, raw)
    assert_refused(answers, closed, 400, 3)


def test_smuggled_request_never_reaches_the_backend(gateway: Gateway) -> None:
    theme = f"smuggled-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"theme": theme}).encode()
    hidden = b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    head = b"POST /v1/shelves HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    answers, closed = exchange(gateway, head % (len(hidden) + 5) + hidden)
    assert_refused(answers, closed, 400, 3)
    # Themes are unique: had the hidden request been forwarded, creating it now would be a 409.
    create = request("/v1/shelves", "Host: gw", "Connection: close", f"Content-Length: {len(payload)}", method="POST")
    answers, _ = exchange(gateway, create + payload)
    assert [a.status for a in answers] == [200], (answers, "".join(gateway.process.output))
    assert answers[0].json()["theme"] == theme


@pytest.mark.parametrize(
    "header",
    [
        b"X-A: a\x00b",
        b"X-A: a\x01b",
        b"X-A: a\x1bb",
        b"X-A: a\x7fb",
        b"X\x00A: 1",
        b"X\x01A: 1",
        b"X A: 1",
        b"X-A\x7f: 1",
    ],
    ids=repr,
)
def test_control_characters_in_headers_are_400(gateway: Gateway, header: bytes) -> None:
    answers, closed = exchange(gateway, b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\n" + header + b"\r\n\r\n")
    assert_refused(answers, closed, 400, 3)


def test_tab_and_obs_text_in_header_values_are_allowed(gateway: Gateway) -> None:
    answers, _ = exchange(gateway, request("/v1/shelves", "Host: gw", "X-A: a\tb", "X-B: caf\xe9", "Connection: close"))
    assert [a.status for a in answers] == [200]


def test_underscore_headers_are_dropped_not_refused(gateway: Gateway) -> None:
    raw = request(
        "/v1/debug/metadata",
        "Host: gw",
        "Grpc-Metadata-Tenant: acme",
        "Grpc_Metadata_Tenant: evil",
        "X_Forwarded_For: 6.6.6.6",
        "Connection: close",
    )
    answers, _ = exchange(gateway, raw)
    assert [a.status for a in answers] == [200], answers
    metadata = answers[0].json()["metadata"]
    assert metadata["tenant"] == "acme"
    assert metadata["x-forwarded-for"] == "127.0.0.1"
    assert not any("evil" in value or "6.6.6.6" in value for value in metadata.values()), metadata


def test_oversized_uri_is_414(gateway: Gateway) -> None:
    body = assert_refused(*exchange(gateway, request("/v1/" + "a" * 1100, "Host: gw")), 414, 11)
    assert "1024" in body["message"]


def test_uri_under_the_limit_is_served(gateway: Gateway) -> None:
    answers, _ = exchange(gateway, request("/v1/" + "a" * 1000, "Host: gw", "Connection: close"))
    assert [a.status for a in answers] == [404]


@pytest.mark.parametrize(
    "headers",
    [
        ["X-Big: " + "v" * 1100],
        ["X-" + "n" * 1100 + ": 1"],
        ["X-A: 1", "X-Big: " + "v" * 600 + "w" * 600],
    ],
    ids=["value", "name", "second-header"],
)
def test_oversized_header_is_431(gateway: Gateway, headers: list[str]) -> None:
    raw = request("/v1/" + "p" * 900, "Host: gw", *headers)  # a long, legal target: the header is at fault
    assert_refused(*exchange(gateway, raw), 431, 11)


def test_too_many_headers_is_431(gateway: Gateway) -> None:
    raw = request("/v1/shelves", "Host: gw", *(f"X-H{i}: {i}" for i in range(25)))
    body = assert_refused(*exchange(gateway, raw), 431, 11)
    assert "20" in body["message"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(gateway: Gateway, chunked: bool) -> None:
    payload = json.dumps({"theme": "x" * 2000}).encode()
    if chunked:
        raw = request("/v1/shelves", "Host: gw", "Transfer-Encoding: chunked", "Connection: close", method="POST")
        raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    else:
        raw = request("/v1/shelves", "Host: gw", f"Content-Length: {len(payload)}", "Connection: close", method="POST")
        raw += payload
    answers, _ = exchange(gateway, raw)
    assert [a.status for a in answers] == [413], answers
    assert answers[0].json()["code"] == 11


def test_slowloris_head_is_408_and_closed(gateway: Gateway) -> None:
    started = time.monotonic()
    trickle = [b"X-Slow: "] + [b"z"] * 30
    answers, closed = exchange(gateway, b"GET /v1/shelves HTTP/1.1\r\nHost: gw\r\n", *trickle, pause=0.05)
    assert_refused(answers, closed, 408, 4)
    assert HEAD_TIMEOUT * 0.9 < time.monotonic() - started < HEAD_TIMEOUT + 1.0


def test_connection_that_sends_nothing_is_closed_silently(gateway: Gateway) -> None:
    started = time.monotonic()
    with socket.create_connection((gateway.host, gateway.port), timeout=3) as sock:
        raw, closed = _read_until_closed(sock, 2.0)
    assert closed and raw == b""
    assert time.monotonic() - started < HEAD_TIMEOUT + 1.0


def test_slow_body_is_408_and_closed(gateway: Gateway) -> None:
    head = request("/v1/shelves", "Host: gw", "Content-Length: 40", method="POST")
    started = time.monotonic()
    answers, closed = exchange(gateway, head + b'{"theme": ', wait=3.0)
    body = assert_refused(answers, closed, 408, 4)
    assert "body" in body["message"]
    assert BODY_TIMEOUT * 0.9 < time.monotonic() - started < BODY_TIMEOUT + 1.0


def test_body_timeout_runs_between_reads_not_over_the_body(gateway: Gateway) -> None:
    # Four gaps of 0.25 s: the whole body takes longer than either timeout, no single gap does.
    head = request(
        "/bookstore.v1.Bookstore/GetStats", "Host: gw", "Content-Length: 5", "Connection: close", method="POST"
    )
    answers, _ = exchange(gateway, head + b"{", b" ", b" ", b" ", b"}", pause=0.25)
    assert [a.status for a in answers] == [200], answers
    assert "shelfCount" in answers[0].json()


def test_pipelined_requests_are_all_answered(gateway: Gateway) -> None:
    stats = request("/bookstore.v1.Bookstore/GetStats", "Host: gw", "Content-Length: 2", method="POST") + b"{}"
    last = request("/v1/shelves", "Host: gw", "Connection: close")
    answers, closed = exchange(gateway, stats + request("/v1/shelves", "Host: gw") + last)
    assert [a.status for a in answers] == [200, 200, 200] and closed


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (request("/v1/shelves", "Host: gw", version="HTTP/2.0"), 505, 12),
        (request("/v1/shelves", "Host: gw", "Transfer-Encoding: gzip, chunked", method="POST") + b"0\r\n\r\n", 501, 12),
    ],
    ids=["http-2.0-over-http1", "gzip-transfer-coding"],
)
def test_versions_and_codings_the_gateway_does_not_speak(gateway: Gateway, raw: bytes, status: int, code: int) -> None:
    assert_refused(*exchange(gateway, raw), status, code)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/shelves/1/books", b'{"title": "t", "pages": 1e400}'),
        ("/v1/shelves/1/books", b'{"title": "t", "pages": 123456789012345678901234567890}'),
        ("/v1/shelves/1/books", b'{"title": "t", "pages": 1.5}'),
        ("/v1/shelves", b'{"theme": "\xed\xa0\x80"}'),
        ("/bookstore.v1.Bookstore/CreateShelf", b'{"shelf": ' * 50_000 + b"{}" + b"}" * 50_000),
        ("/bookstore.v1.Bookstore/CreateShelf", b"[" * 200_000 + b"]" * 200_000),
        ("/v1/shelves", b'{"theme": "a", "bookCount": 1, "book_count": 2}'),
    ],
    ids=[
        "huge-float",
        "int32-overflow",
        "fraction-for-int",
        "surrogate-utf8",
        "deep-objects",
        "deep-arrays",
        "json-and-proto-name",
    ],
)
def test_hostile_json_is_400_not_500(gateway: Gateway, path: str, body: bytes) -> None:
    raw = request(path, "Host: gw", f"Content-Length: {len(body)}", "Connection: close", method="POST") + body
    answers, _ = exchange(gateway, raw)
    assert [a.status for a in answers] == [400], answers
    assert answers[0].json()["code"] == 3
