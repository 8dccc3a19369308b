"""Header <-> metadata mapping (grpc-gateway's defaults) and Grpc-Timeout parsing."""

from __future__ import annotations

import pytest

from transcoder.errors import TranscodeError
from transcoder.metadata import (
    PERMANENT_HEADERS,
    canonical_header_name,
    http_status_override,
    parse_grpc_timeout,
    request_metadata,
    response_header_metadata,
    response_trailer_metadata,
)
from transcoder.status import Code


def mapped(*headers: tuple[str, str]) -> list[tuple[str, str | bytes]]:
    return request_metadata(headers, peer_ip=None, host=None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (("Grpc-Metadata-Tenant", "acme"), [("tenant", "acme")]),
        (("grpc-metadata-Request-ID", "r1"), [("request-id", "r1")]),
        (("GRPC-METADATA-X_Y.Z", "v"), [("x_y.z", "v")]),
        (("Accept", "application/json"), [("grpcgateway-accept", "application/json")]),
        (("content-type", "application/json"), [("grpcgateway-content-type", "application/json")]),
        (("User-Agent", "curl/8"), [("grpcgateway-user-agent", "curl/8")]),
        (("Cookie", "a=b"), [("grpcgateway-cookie", "a=b")]),
        (("If-Schedule-Tag-Match", "t"), [("grpcgateway-if-schedule-tag-match", "t")]),
        (("Authorization", "Bearer t"), [("authorization", "Bearer t"), ("grpcgateway-authorization", "Bearer t")]),
        (("traceparent", "00-abc-def-01"), [("traceparent", "00-abc-def-01")]),
        (("TraceState", "k=v"), [("tracestate", "k=v")]),
        (("X-Custom", "dropped"), []),
        (("Content-Length", "10"), []),
        (("Grpc-Timeout", "1S"), []),
        (("Connection", "close"), []),
        (("Grpc-Metadata-", "empty key"), []),
        (("Grpc-Metadata-Bad Key", "v"), []),
        (("Grpc-Metadata-Bad:Key", "v"), []),
        (("Grpc-Metadata-Ключ", "v"), []),
        (("Grpc-Metadata-Grpc-Status", "0"), []),  # gRPC owns every grpc-* key
        (("Grpc-Metadata-Grpc-Timeout", "1S"), []),
        (("Grpc-Metadata-Content-Type", "text/plain"), []),
        (("Grpc-Metadata-Te", "trailers"), []),
        (("Grpc-Metadata-Host", "evil"), []),
        (("Grpc-Metadata-Connection", "close"), []),
        (("Grpc-Metadata-User-Agent", "x"), []),
        (("Grpc-Metadata-X-Forwarded-For", "1.2.3.4"), []),  # only the gateway writes it
        (("Grpc-Metadata-Tenant", "line\r\nbreak"), []),
        (("Grpc-Metadata-Tenant", "tab\there"), []),
        (("Grpc-Metadata-Tenant", "caf\u00e9"), []),  # gRPC text values are printable ASCII
        (("Grpc-Metadata-Tenant", ""), [("tenant", "")]),
    ],
)
def test_request_header_mapping(header: tuple[str, str], expected: list[tuple[str, str | bytes]]) -> None:
    assert mapped(header) == expected


def test_permanent_header_list_is_grpc_gateways() -> None:
    assert len(PERMANENT_HEADERS) == 24
    assert "authorization" in PERMANENT_HEADERS
    assert "x-forwarded-for" not in PERMANENT_HEADERS


def test_request_headers_keep_order_and_repeats() -> None:
    result = mapped(("Grpc-Metadata-A", "1"), ("Accept", "x"), ("Grpc-Metadata-A", "2"))
    assert result == [("a", "1"), ("grpcgateway-accept", "x"), ("a", "2")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("AQID", b"\x01\x02\x03"),
        ("AQI=", b"\x01\x02"),  # padded
        ("AQI", b"\x01\x02"),  # unpadded
        ("-_8=", b"\xfb\xff"),  # url-safe alphabet
        ("-_8", b"\xfb\xff"),
        ("+/8=", b"\xfb\xff"),
        ("", b""),
    ],
)
def test_binary_request_header_is_base64_decoded(value: str, expected: bytes) -> None:
    assert mapped(("Grpc-Metadata-Trace-Bin", value)) == [("trace-bin", expected)]


@pytest.mark.parametrize("value", ["AQ!D", "A", "AQIDB", "AQ==AQ==", "caf\u00e9", "A Q I D"])
def test_binary_request_header_that_is_not_base64_is_refused(value: str) -> None:
    with pytest.raises(TranscodeError, match="invalid binary header Grpc-Metadata-Trace-Bin") as info:
        mapped(("Grpc-Metadata-Trace-Bin", value))
    assert info.value.code == Code.INVALID_ARGUMENT


def test_forwarded_headers_from_peer_and_host() -> None:
    result = request_metadata([("Accept", "*/*")], peer_ip="10.0.0.9", host="api.example.com")
    assert result == [
        ("grpcgateway-accept", "*/*"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-for", "10.0.0.9"),
    ]


def test_forwarded_for_appends_the_peer_to_the_clients_chain() -> None:
    result = request_metadata(
        [("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")], peer_ip="10.0.0.9", host=None
    )
    assert result == [("x-forwarded-for", "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9")]


def test_forwarded_for_without_peer_keeps_the_clients_chain() -> None:
    assert mapped(("X-Forwarded-For", "1.1.1.1")) == [("x-forwarded-for", "1.1.1.1")]


def test_client_forwarded_host_wins_over_host() -> None:
    result = request_metadata([("X-Forwarded-Host", "original.example")], peer_ip=None, host="internal:8080")
    assert result == [("x-forwarded-host", "original.example")]


def test_no_forwarded_headers_without_peer_or_host() -> None:
    assert mapped() == []


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("foo", "bar")], [("Grpc-Metadata-Foo", "bar")]),
        ([("x-request-id", "r1")], [("Grpc-Metadata-X-Request-Id", "r1")]),
        ([("a_b.c", "v")], [("Grpc-Metadata-A_b.c", "v")]),
        ([("trace-bin", b"\x01\x02")], [("Grpc-Metadata-Trace-Bin", "AQI=")]),
        ([("trace-bin", "\x01")], [("Grpc-Metadata-Trace-Bin", "AQ==")]),
        ([("k", b"bytes")], [("Grpc-Metadata-K", "bytes")]),
        ([("k", b"\xff")], []),
        ([("content-type", "application/grpc")], []),
        ([("grpc-status", "0"), ("grpc-message", "ok"), ("grpc-status-details-bin", b"x")], []),
        ([("grpc-custom", "v")], [("Grpc-Metadata-Grpc-Custom", "v")]),
        ([("bad key", "v"), ("x\r\ny", "v"), (":status", "200")], []),
        ([("k", "a\r\nSet-Cookie: x")], []),
        ([("a", "1"), ("a", "2")], [("Grpc-Metadata-A", "1"), ("Grpc-Metadata-A", "2")]),
    ],
)
def test_response_header_metadata(metadata: list[tuple[str, str | bytes]], expected: list[tuple[str, str]]) -> None:
    assert response_header_metadata(metadata) == expected


def test_response_trailer_metadata() -> None:
    metadata: list[tuple[str, str | bytes]] = [("foo-bar", "x"), ("grpc-status", "0"), ("d-bin", b"\x00")]
    assert response_trailer_metadata(metadata) == [("Grpc-Trailer-Foo-Bar", "x"), ("Grpc-Trailer-D-Bin", "AA==")]


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("foo-bar", "Foo-Bar"),
        ("FOO-BAR", "Foo-Bar"),
        ("x", "X"),
        ("a_b", "A_b"),
        ("grpc-metadata-x", "Grpc-Metadata-X"),
    ],
)
def test_canonical_header_name(name: str, canonical: str) -> None:
    assert canonical_header_name(name) == canonical


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("30S", 30.0),
        ("100m", 0.1),
        ("250u", 0.00025),
        ("5n", 5e-9),
        ("0S", 0.0),
        ("99999999S", 99999999.0),
        ("00000001m", 0.001),
    ],
)
def test_parse_grpc_timeout(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "S", "1", "1s", "1h", "1.5S", "-1S", "123456789S", " 1S", "1S ", "1S\n", "1 S", "\uff11S", "1SS", "0x1S"],
)
def test_parse_grpc_timeout_refuses_bad_values(value: str) -> None:
    with pytest.raises(TranscodeError) as info:
        parse_grpc_timeout(value)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == f'invalid Grpc-Timeout header "{value}"'


@pytest.mark.parametrize(
    ("metadata", "status", "rest"),
    [
        ([("x-http-code", "201"), ("x-a", "1")], 201, [("x-a", "1")]),
        ([("x-a", "1"), ("X-Http-Code", "404"), ("x-http-code", "409")], 404, [("x-a", "1")]),
        ([("x-http-code", b"202")], 202, []),
        ([("x-http-code", " 204 ")], 204, []),
        # anything but 200-599 is not honoured, and stays visible as a Grpc-Metadata-X-Http-Code header
        ([("x-http-code", "abc")], None, [("x-http-code", "abc")]),
        ([("x-http-code", "101")], None, [("x-http-code", "101")]),
        ([("x-http-code", "600")], None, [("x-http-code", "600")]),
        ([("x-http-code", "2000")], None, [("x-http-code", "2000")]),
        ([("x-a", "1")], None, [("x-a", "1")]),
        ([], None, []),
    ],
)
def test_http_status_override(
    metadata: list[tuple[str, str | bytes]], status: int | None, rest: list[tuple[str, str | bytes]]
) -> None:
    assert http_status_override(metadata) == (status, rest)
