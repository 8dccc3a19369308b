"""End to end: the real gateway process in front of the real bookstore backend, over HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import Client, GatewayFactory, bookstore_config, start_backend


@pytest.fixture
def client(gateway_factory: GatewayFactory, bookstore_descriptor_set: Path) -> Iterator[Client]:
    """A gateway in front of a fresh backend, so tests that change data do not see each other."""
    backend, port = start_backend()
    try:
        yield Client(gateway_factory(bookstore_config(bookstore_descriptor_set, port)))
    finally:
        backend.stop()


def assert_status_body(body: Any, code: int) -> None:
    assert isinstance(body, dict), body
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)


def test_get_list_uses_grpc_gateway_json(client: Client) -> None:
    status, headers, body = client.get("/v1/shelves")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    shelf = body["shelves"][0]
    assert shelf["id"] == "1"  # int64 as a JSON string, as protojson writes it
    assert "bookCount" in shelf and "createTime" in shelf  # lowerCamel names
    assert body["nextPageToken"] == ""  # unpopulated fields are emitted (grpc-gateway v2 default)


def test_create_then_get_shelf(client: Client) -> None:
    status, _, created = client.post("/v1/shelves", {"theme": "Travel"})
    assert status == 200, created
    assert created["theme"] == "Travel"
    status, _, fetched = client.get(f"/v1/shelves/{created['id']}")
    assert status == 200 and fetched == created


def test_query_parameters_page_and_filter(client: Client) -> None:
    status, _, page = client.get("/v1/shelves/1/books?page_size=1")
    assert status == 200 and len(page["books"]) == 1 and page["nextPageToken"]
    status, _, rest = client.get(f"/v1/shelves/1/books?page_size=1&page_token={page['nextPageToken']}")
    assert status == 200 and rest["books"][0]["id"] != page["books"][0]["id"]


def test_enum_query_parameter_by_name_and_number(client: Client) -> None:
    by_name = client.get("/v1/shelves/1/books?genre=FICTION")
    by_number = client.get("/v1/shelves/1/books?genre=1")
    assert by_name[0] == by_number[0] == 200
    assert by_name[2] == by_number[2]
    status, _, body = client.get("/v1/shelves/1/books?genre=NOT_A_GENRE")
    assert status == 400
    assert_status_body(body, 3)
    assert "genre" in body["message"]


def test_body_field_rule_and_additional_binding(client: Client) -> None:
    status, _, book = client.post("/v1/shelves/1/books", {"title": "Dune", "author": "Frank Herbert", "genre": 4})
    assert status == 200, book
    assert book["genre"] == "SCIENCE_FICTION"
    status, _, by_alt = client.get(f"/v1/books/{book['id']}")
    assert status == 200 and by_alt["title"] == "Dune"
    status, _, by_name = client.get(f"/v1/shelves/1/books/{book['id']}")
    assert status == 200 and by_name["id"] == book["id"]


def test_patch_with_field_mask_from_query(client: Client) -> None:
    _, _, book = client.post("/v1/shelves/1/books", {"title": "Old", "author": "A", "pages": 10})
    status, _, updated = client.request(
        "PATCH", f"/v1/shelves/1/books/{book['id']}?update_mask=title", body=json.dumps({"title": "New", "pages": 99})
    )
    assert status == 200, updated
    assert updated["title"] == "New" and updated["pages"] == 10


def test_custom_verb(client: Client) -> None:
    _, _, book = client.post("/v1/shelves/1/books", {"title": "Verbs"})
    status, _, published = client.post(f"/v1/shelves/1/books/{book['id']}:publish", {"publisher": "Acme"})
    assert status == 200 and published["publisher"] == "Acme"
    status, _, again = client.post(f"/v1/shelves/1/books/{book['id']}:publish", {})
    assert status == 400  # FAILED_PRECONDITION
    assert_status_body(again, 9)
    assert any(d["@type"].endswith("google.rpc.ErrorInfo") for d in again["details"])


def test_resource_name_template_captures_multiple_segments(client: Client) -> None:
    _, _, book = client.post("/v1/shelves/2/books", {"title": "Named"})
    status, _, body = client.get(f"/v1/shelves/2/books/{book['id']}")
    assert status == 200 and body["title"] == "Named"


def test_delete_returns_empty_object(client: Client) -> None:
    _, _, shelf = client.post("/v1/shelves", {"theme": "Temporary"})
    status, _, body = client.request("DELETE", f"/v1/shelves/{shelf['id']}")
    assert status == 200 and body == {}
    status, _, _ = client.get(f"/v1/shelves/{shelf['id']}")
    assert status == 404


def test_grpc_error_with_details_maps_to_http(client: Client) -> None:
    status, _, body = client.get("/v1/shelves/999")
    assert status == 404
    assert_status_body(body, 5)
    resource = next(d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.ResourceInfo")
    assert "999" in resource["resourceName"]


def test_already_exists_is_409(client: Client) -> None:
    client.post("/v1/shelves", {"theme": "Twice"})
    status, _, body = client.post("/v1/shelves", {"theme": "Twice"})
    assert status == 409
    assert_status_body(body, 6)


def test_bad_request_details_are_rendered(client: Client) -> None:
    status, _, body = client.post("/v1/shelves", {"theme": ""})
    assert status == 400
    bad_request = next(d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert bad_request["fieldViolations"][0]["field"]


def test_auto_mapping_calls_a_method_without_a_rule(client: Client) -> None:
    status, _, stats = client.post("/bookstore.v1.Bookstore/GetStats", {})
    assert status == 200, stats
    assert stats["shelfCount"] >= 2


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("POST", "/v1/shelves", "{not json", "JSON"),
        ("POST", "/v1/shelves", '{"theme": 5}', "theme"),
        ("POST", "/v1/shelves/1/books", '{"genre": "NOPE"}', "genre"),
        ("POST", "/v1/shelves/1/books", '{"pages": 99999999999}', "pages"),
        ("GET", "/v1/shelves/99999999999999999999", None, "shelf"),
        ("GET", "/v1/shelves/abc", None, "shelf"),
        ("POST", "/v1/shelves", '{"theme": "a", "theme": "b"}', "uplicate"),
        ("POST", "/v1/shelves", "[" * 5000 + "]" * 5000, ""),
        ("POST", "/v1/shelves", b"\xff\xfe", ""),
    ],
)
def test_bad_input_is_a_400_with_a_message(
    client: Client, method: str, path: str, body: str | bytes | None, needle: str
) -> None:
    status, _, answer = client.request(method, path, body=body)
    assert status == 400, answer
    assert_status_body(answer, 3)
    assert needle in answer["message"]


def test_body_over_the_limit_is_413(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    config = bookstore_config(bookstore_descriptor_set, bookstore)
    config["routes"][0]["max_body_size"] = 64
    client = Client(gateway_factory(config))
    status, _, body = client.post("/v1/shelves", {"theme": "x" * 100})
    assert status == 413
    assert_status_body(body, 11)
    status, _, _ = client.post("/v1/shelves", {"theme": "small enough"})
    assert status == 200


def test_unknown_route_is_404_json(client: Client) -> None:
    status, _, body = client.get("/nothing/here")
    assert status == 404
    assert_status_body(body, 5)


def test_unbound_path_under_a_transcoding_route_is_404(client: Client) -> None:
    status, _, body = client.get("/v1/nothing")
    assert status == 404
    assert_status_body(body, 5)


def test_known_path_wrong_method_is_405_with_allow(client: Client) -> None:
    status, headers, body = client.request("PUT", "/v1/shelves")
    assert status == 405
    assert set(headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert_status_body(body, 12)


def test_route_method_filter_gives_405(client: Client) -> None:
    status, headers, _ = client.get("/bookstore.v1.Bookstore/GetStats")
    assert status == 405 and headers["Allow"] == "POST"


def test_metadata_goes_both_ways(client: Client) -> None:
    status, headers, body = client.get(
        "/v1/debug/metadata",
        headers={
            "Grpc-Metadata-Tenant": "acme",
            "Authorization": "Bearer t0k",
            "User-Agent": "curl/8",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Not-Forwarded": "dropped",
            "Grpc-Metadata-Blob-Bin": "AAEC",
        },
    )
    assert status == 200, body
    received = body["metadata"]
    assert received["tenant"] == "acme"
    assert received["authorization"] == "Bearer t0k"
    assert received["grpcgateway-authorization"] == "Bearer t0k"
    assert received["grpcgateway-user-agent"] == "curl/8"
    assert received["traceparent"].startswith("00-0af7651916cd43dd")
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert "x-forwarded-host" in received
    assert "x-not-forwarded" not in received
    assert received["blob-bin"] == "AAEC"  # the backend re-encodes the decoded bytes
    assert headers["Grpc-Metadata-X-Bookstore-Served-By"] == "backend-1"
    assert headers["Grpc-Trailer-X-Bookstore-Trailer"] == "done"


def test_trailers_are_http_trailers_when_the_client_asks(client: Client) -> None:
    with socket.create_connection((client.gateway.host, client.gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/debug/metadata HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"Trailer: Grpc-Trailer-X-Bookstore-Trailer" in head
    assert b"Grpc-Trailer-X-Bookstore-Trailer" not in head.split(b"Trailer:", 1)[0]
    assert rest.endswith(b"0\r\nGrpc-Trailer-X-Bookstore-Trailer: done\r\n\r\n")


def test_invalid_grpc_timeout_is_400(client: Client) -> None:
    status, _, body = client.get("/v1/debug/sleep?millis=1", headers={"Grpc-Timeout": "soon"})
    assert status == 400
    assert "Grpc-Timeout" in body["message"]


def test_grpc_timeout_header_sets_the_deadline(client: Client) -> None:
    started = time.monotonic()
    status, _, body = client.get("/v1/debug/sleep?millis=3000", headers={"Grpc-Timeout": "200m"})
    assert status == 504, body
    assert_status_body(body, 4)
    assert time.monotonic() - started < 2.5


def test_slow_upstream_is_504_at_the_route_deadline(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    client = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore, deadline=0.3)))
    started = time.monotonic()
    status, _, body = client.get("/v1/debug/sleep?duration=5s")
    assert status == 504, body
    assert time.monotonic() - started < 3


def test_upstream_down_is_503_fast(gateway_factory: GatewayFactory, bookstore_descriptor_set: Path) -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    client = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, dead_port)))
    started = time.monotonic()
    status, _, body = client.get("/v1/shelves")
    assert status == 503, body
    assert_status_body(body, 14)
    assert time.monotonic() - started < 3
    status, _, _ = client.get("/v1/shelves")  # and again: the gateway itself is fine
    assert status == 503


def test_strict_query_refuses_unknown_parameters(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    client = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore, strict_query=True)))
    status, _, body = client.get("/v1/shelves?colour=blue")
    assert status == 400 and "colour" in body["message"]
    lenient = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore)))
    assert lenient.get("/v1/shelves?colour=blue")[0] == 200


def test_json_print_options(gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int) -> None:
    options = {"use_proto_names": True, "emit_unpopulated": False, "enums_as_ints": True}
    client = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore, json=options)))
    status, _, body = client.get("/v1/shelves")
    assert status == 200
    assert "next_page_token" not in body and "nextPageToken" not in body
    assert "book_count" in body["shelves"][0]


def test_path_normalisation_routes_one_string(client: Client) -> None:
    assert client.get("//v1//shelves")[0] == 200
    assert client.get("/v1/x/../shelves")[0] == 200
    assert client.get("/v1/%73helves")[0] == 200
    assert client.get("/v1/shelves/%2e%2e/shelves")[0] == 200
    assert client.get("/v1/a%00b")[0] == 400
