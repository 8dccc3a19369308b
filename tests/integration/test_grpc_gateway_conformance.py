"""Conformance with grpc-gateway v2 through a real gateway: the bookstore, and an echo backend for kitchen.proto.

The echo backend (tests/servers/kitchen_backend.py) answers CreateKitchen with the request as it came and the
other methods with the request packed in `Kitchen.any`, so each answer shows the message the gateway built from
the path, the query and the body. docs/transcoding.md lists the rules these tests pin, and where protogate
differs from grpc-gateway on purpose.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from gateway_harness import Client, Gateway, bookstore_config, start_backend, start_gateway
from processes import BIN, REPO, start

KITCHEN_BACKEND = REPO / "tests" / "servers" / "kitchen_backend.py"
ECHO_CODE = "Grpc-Metadata-X-Echo-Code"
# grpc-gateway's runtime.HTTPStatusFromCode, code by code.
GRPC_GATEWAY_STATUS = {
    1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, bookstore_descriptor_set: Path, kitchen_descriptor_set: bytes
) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("conformance")
    kitchen_set = root / "kitchen.binpb"
    kitchen_set.write_bytes(kitchen_descriptor_set)
    bookstore, bookstore_port = start_backend()
    kitchen = start([str(BIN / "python"), str(KITCHEN_BACKEND), "--port", "0", "--descriptor-set", str(kitchen_set)])
    try:
        kitchen_port = int(kitchen.wait_for("kitchen backend listening on").rsplit(":", 1)[1])
        config = bookstore_config(bookstore_descriptor_set, bookstore_port)
        config["protos"].append({"id": "kitchen", "descriptor_set": str(kitchen_set)})
        config["upstreams"].append(
            {"id": "kitchen", "scheme": "grpc", "nodes": {f"127.0.0.1:{kitchen_port}": 1}, "timeout": {"read": 3}}
        )
        kitchen_route = {
            "id": "kitchen",
            "uris": ["/v1/kitchens", "/v1/kitchens/*", "/v1/things/*", "/v1/numbers/*"],
            "upstream_id": "kitchen",
            "plugins": {"grpc-transcode": {"proto_id": "kitchen", "service": "protogate.test.v1.KitchenService"}},
        }
        config["routes"].insert(0, kitchen_route)
        (root / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = start_gateway(root / "gateway.yaml")
        try:
            yield gateway
        finally:
            gateway.process.stop()
    finally:
        kitchen.stop()
        bookstore.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def ok(answer: tuple[int, Any, Any]) -> Any:
    status, _, body = answer
    assert status == 200, body
    return body


def echoed(client: Client, path: str, **kwargs: Any) -> dict[str, Any]:
    """The request message the echo backend received, as JSON (it comes back packed in Kitchen.any)."""
    return ok(client.get(path, **kwargs))["any"]


def assert_status_body(body: Any, code: int) -> None:
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, body
    assert body["code"] == code and isinstance(body["message"], str) and isinstance(body["details"], list)


# --- answers: protojson as grpc-gateway's default marshaler writes it ---------------------------------------------


def test_answers_use_json_names_and_emit_unpopulated_fields(client: Client) -> None:
    status, headers, body = client.post("/v1/kitchens", {})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["int64Value"] == "0" and body["uint64Value"] == "0"  # 64-bit integers are strings
    assert body["doubleValue"] == 0 and body["boolValue"] is False and body["stringValue"] == "" == body["bytesValue"]
    assert body["color"] == "COLOR_UNSPECIFIED"  # enums by name
    assert body["nested"] is None and body["timestamp"] is None and body["wrappedInt64"] is None  # unset messages
    assert body["repeatedInt32"] == [] and body["stringToInt32"] == {}
    # EmitUnpopulated leaves out unset oneof members and proto3 `optional` fields (protojson's rule).
    assert not {"choiceName", "choiceId", "choiceNested", "optionalInt32"} & set(body)
    assert "double_value" not in body  # UseProtoNames is off


def test_body_takes_protojson_in_every_accepted_form(client: Client) -> None:
    body = {
        "double_value": "NaN",  # proto name; non-finite numbers as strings
        "floatValue": "-Infinity",
        "int64Value": 9007199254740993,  # a number past 2^53 keeps every digit
        "uint64Value": "18446744073709551615",
        "int32Value": 1.0,
        "bytesValue": "-_8",  # URL-safe alphabet, no padding
        "repeatedBytes": ["+/8="],
        "color": 2,  # an enum by number
        "colors": ["COLOR_RED", 3],
        "timestamp": "2024-01-01T00:00:00.5+01:00",
        "duration": "1.000500s",
        "fieldMask": "nested.childName,b",
        "structValue": {"k": [1, "x", None, True]},
        "value": None,
        "wrappedInt64": "5",
        "wrappedBytes": "AAE",
        "any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
        "int64ToNested": {"7": {"name": "n"}},
        "boolToString": {"true": "t"},
        "optionalInt32": 0,
        "choiceId": "4",
    }
    answer = ok(client.post("/v1/kitchens", body))
    assert answer["doubleValue"] == "NaN" and answer["floatValue"] == "-Infinity"
    assert answer["int64Value"] == "9007199254740993" and answer["uint64Value"] == "18446744073709551615"
    assert answer["int32Value"] == 1
    assert answer["bytesValue"] == "+/8=" and answer["repeatedBytes"] == ["+/8="]  # written back standard, padded
    assert answer["color"] == "COLOR_GREEN" and answer["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    assert answer["timestamp"] == "2023-12-31T23:00:00.500Z" and answer["duration"] == "1.000500s"
    assert answer["fieldMask"] == "nested.childName,b"
    assert answer["structValue"] == {"k": [1, "x", None, True]} and answer["value"] is None
    assert answer["wrappedInt64"] == "5" and answer["wrappedBytes"] == "AAE="
    assert answer["any"] == {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"}
    assert answer["int64ToNested"]["7"]["name"] == "n" and answer["boolToString"] == {"true": "t"}
    assert answer["optionalInt32"] == 0 and answer["choiceId"] == "4"  # set, so written even when zero


def test_response_body_answers_only_that_field(client: Client) -> None:
    answer = ok(client.get("/v1/kitchens?name=x"))
    assert isinstance(answer, list) and answer[0]["any"]["name"] == "x"


# --- request: path, query and body, by grpc-gateway's rules --------------------------------------------------------


def test_query_parameters_fill_every_kind_of_field(client: Client) -> None:
    query = [
        ("kitchen.double_value", "NaN"),
        ("kitchen.int64Value", "-9223372036854775808"),  # a JSON name in a dotted path
        ("kitchen.bool_value", "t"),  # strconv.ParseBool
        ("kitchen.bytes_value", "-_8"),
        ("kitchen.color", "COLOR_BLUE"),
        ("kitchen.colors", "1"),
        ("kitchen.colors", "COLOR_GREEN"),
        ("kitchen.repeated_string", "a"),
        ("kitchen.repeated_string", "b,c"),  # a comma is part of the value: repeat the name for a list
        ("kitchen.string_to_int32[k]", "3"),
        ("kitchen.timestamp", "2024-01-01T00:00:00Z"),
        ("kitchen.duration", "1h2m"),  # Go's time.ParseDuration form, as grpc-gateway reads it
        ("kitchen.field_mask", "a,b.c"),
        ("kitchen.struct_value", '{"a":1}'),
        ("kitchen.wrapped_int64", "5"),
        ("kitchen.wrapped_string", ""),
        ("kitchen.nested.child.name", "deep"),
        ("unknown", "ignored"),  # unknown names are ignored, as with DiscardUnknown
        ("kitchen.unknown", "ignored"),
    ]
    request = echoed(client, "/v1/things/abc?" + "&".join(f"{k}={quote(v)}" for k, v in query))
    kitchen = request["kitchen"]
    assert request["name"] == "things/abc"
    assert kitchen["doubleValue"] == "NaN" and kitchen["int64Value"] == "-9223372036854775808"
    assert kitchen["boolValue"] is True and kitchen["bytesValue"] == "+/8="
    assert kitchen["color"] == "COLOR_BLUE" and kitchen["colors"] == ["COLOR_RED", "COLOR_GREEN"]
    assert kitchen["repeatedString"] == ["a", "b,c"] and kitchen["stringToInt32"] == {"k": 3}
    assert kitchen["timestamp"] == "2024-01-01T00:00:00Z" and kitchen["duration"] == "3720s"
    assert kitchen["fieldMask"] == "a,b.c" and kitchen["structValue"] == {"a": 1}
    assert kitchen["wrappedInt64"] == "5" and kitchen["wrappedString"] == ""
    assert kitchen["nested"]["child"]["name"] == "deep"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kitchen.int32_value=1.5", '"1.5" is not a valid int32'),
        ("kitchen.color=COLOR_PURPLE", '"COLOR_PURPLE" is not a valid protogate.test.v1.Color'),
        ("kitchen.color=9", '"9" is not a valid protogate.test.v1.Color'),  # a number must name a value
        ("kitchen.string_value=a&kitchen.string_value=b", "given more than once"),
        ("kitchen.nested=x", "is a protogate.test.v1.Nested message"),
        ("kitchen.timestamp=2024-01-01", "is not an RFC 3339 timestamp"),
    ],
)
def test_query_values_that_do_not_fit_are_400(client: Client, query: str, message: str) -> None:
    status, _, body = client.get(f"/v1/things/abc?{query}")
    assert status == 400
    assert_status_body(body, 3)
    assert message in body["message"]


def test_path_variables_take_enums_by_name_or_number(client: Client) -> None:
    by_name = echoed(client, "/v1/numbers/12/colors/COLOR_BLUE")["kitchen"]
    by_number = echoed(client, "/v1/numbers/12/colors/3")["kitchen"]
    assert by_name["int64Value"] == by_number["int64Value"] == "12"
    assert by_name["color"] == by_number["color"] == "COLOR_BLUE"


def test_percent_encoded_slash_in_path_variables(client: Client) -> None:
    # One segment ({nested.name}): fully decoded. Several ({name=things/*}): "%2F" is kept, as http.proto asks.
    assert echoed(client, "/v1/kitchens/a%2Fb%20c")["nested"]["name"] == "a/b c"
    assert echoed(client, "/v1/things/a%2Fb%20c")["name"] == "things/a%2Fb c"


def test_query_never_overrides_path_or_body_fields(client: Client) -> None:
    request = echoed(client, "/v1/kitchens/from-path?nested.name=from-query&name=q")
    assert request["nested"]["name"] == "from-path" and request["name"] == "q"
    # body "*": the whole request comes from the body, the query string is not read at all
    answer = ok(client.post("/v1/kitchens?stringValue=from-query&int32_value=x", {"stringValue": "from-body"}))
    assert answer["stringValue"] == "from-body" and answer["int32Value"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "invalid JSON body"),
        ('{"stringValue": 1}', 'field "stringValue"'),
        ('{"int32Value": 2147483648}', "Value out of range"),
        ('{"color": "COLOR_PURPLE"}', "Invalid enum value COLOR_PURPLE"),
        ('{"stringValue": "a", "string_value": "b"}', "is given twice"),
        ("[]", "expected a JSON object"),
        ('{"stringValue": "a"} {"x": 1}', "Extra data"),  # grpc-gateway reads the first value and drops the rest
    ],
)
def test_bodies_that_do_not_fit_are_400(client: Client, body: str, message: str) -> None:
    status, headers, answer = client.post("/v1/kitchens", body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert_status_body(answer, 3)
    assert message in answer["message"]


def test_unknown_body_fields_are_ignored_and_an_empty_body_is_an_empty_message(client: Client) -> None:
    # grpc-gateway's default marshaler has DiscardUnknown set; `strict_body: true` refuses them instead.
    assert ok(client.post("/v1/kitchens", {"nope": 1, "nested": {"zz": 2, "name": "n"}}))["nested"]["name"] == "n"
    assert ok(client.post("/v1/kitchens", ""))["stringValue"] == ""


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(GRPC_GATEWAY_STATUS))
def test_every_grpc_code_gets_grpc_gateways_http_status(client: Client, code: int) -> None:
    status, headers, body = client.post("/v1/kitchens", {}, headers={ECHO_CODE: str(code)})
    assert status == GRPC_GATEWAY_STATUS[code]
    assert headers["Content-Type"] == "application/json"
    assert_status_body(body, code)
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" and detail["reason"] == "ECHO"


# --- headers and metadata ------------------------------------------------------------------------------------------


def test_request_headers_become_grpc_gateways_metadata(client: Client) -> None:
    headers = {
        "Authorization": "Bearer t",
        "User-Agent": "ua/1",
        "Accept-Language": "en",
        "Grpc-Metadata-Tenant": "acme",
        "X-Custom": "dropped",
        "X-Forwarded-For": "203.0.113.9",
    }
    metadata = ok(client.get("/v1/debug/metadata", headers=headers))["metadata"]
    assert metadata["authorization"] == metadata["grpcgateway-authorization"] == "Bearer t"
    assert metadata["grpcgateway-user-agent"] == "ua/1" and metadata["grpcgateway-accept-language"] == "en"
    assert metadata["tenant"] == "acme"
    assert not any("custom" in key for key in metadata)
    assert metadata["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert metadata["x-forwarded-host"] == f"{client.gateway.host}:{client.gateway.port}"


def test_response_metadata_becomes_grpc_metadata_and_trailer_headers(client: Client) -> None:
    headers = {"Grpc-Metadata-X-Echo-Header-Shard": "7", "Grpc-Metadata-X-Echo-Trailer-Cost": "12"}
    status, answer_headers, _ = client.post("/v1/kitchens", {}, headers=headers)
    assert status == 200
    assert answer_headers["Grpc-Metadata-Shard"] == "7"
    # Without `TE: trailers` protogate sends trailer metadata as headers (grpc-gateway leaves it out).
    assert answer_headers["Grpc-Trailer-Cost"] == "12"


# --- routing -------------------------------------------------------------------------------------------------------


def test_unknown_path_is_404_and_other_method_is_405(client: Client) -> None:
    status, _, body = client.get("/v1/nothing/here")
    assert status == 404
    assert_status_body(body, 5)
    status, headers, body = client.request("PUT", "/v1/shelves/1")
    assert status == 405 and headers["Allow"] == "DELETE, GET"
    assert_status_body(body, 12)  # UNIMPLEMENTED, as grpc-gateway's routing error handler says


def test_head_answers_as_get_without_a_body_and_a_trailing_slash_matches_nothing(client: Client) -> None:
    conn = http.client.HTTPConnection(client.gateway.host, client.gateway.port, timeout=10)
    try:
        conn.request("HEAD", "/v1/shelves/1")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        assert response.getheader("Content-Type") == "application/json"
    finally:
        conn.close()
    status, _, body = client.get("/v1/shelves/")
    assert status == 404
    assert_status_body(body, 5)


def test_method_override_header_is_not_honoured(client: Client) -> None:
    # grpc-gateway turns a form POST with X-HTTP-Method-Override into that method; protogate routes, authorizes
    # and logs the request's own method, so the POST stays a POST (CreateShelf, whose body must be JSON).
    headers = {"X-HTTP-Method-Override": "GET", "Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = client.request("POST", "/v1/shelves", body="page_size=1", headers=headers)
    assert status == 400 and "invalid JSON body" in body["message"]


# --- streaming -----------------------------------------------------------------------------------------------------


def test_stream_lines_are_result_objects_and_a_failure_is_an_error_line(client: Client) -> None:
    conn = http.client.HTTPConnection(client.gateway.host, client.gateway.port, timeout=10)
    try:
        conn.request("GET", "/v1/shelves/1/books:stream?fail_after=1")
        response = conn.getresponse()
        status, content_type, body = response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()
    assert status == 200 and content_type == "application/json"  # grpc-gateway's type for its JSON stream
    lines = [json.loads(line) for line in body.split(b"\n") if line]
    assert [next(iter(line)) for line in lines] == ["result", "error"]
    assert_status_body(lines[1]["error"], 10)


# --- fixed to match grpc-gateway -----------------------------------------------------------------------------------


def test_patch_body_key_that_names_no_field_is_400(client: Client) -> None:
    # The update mask grpc-gateway infers from the body cannot name an unknown key, so it refuses the request;
    # protogate used to drop the key and send an empty mask, which updated nothing.
    status, _, body = client.request("PATCH", "/v1/shelves/1/books/1", body='{"titel": "typo"}')
    assert status == 400
    assert_status_body(body, 3)
    assert '"titel" names no field of bookstore.v1.Book' in body["message"]


def test_patch_infers_a_sorted_mask_that_walks_into_struct_keys(client: Client) -> None:
    body = json.dumps({"stringValue": "s", "structValue": {"a": {"b": 1}, "c": 2}, "int32Value": 1, "nested": {}})
    status, _, answer = client.request("PATCH", "/v1/kitchens/k1", body=body)
    assert status == 200, answer
    request = answer["any"]
    assert request["name"] == "kitchens/k1"
    assert request["updateMask"] == "int32Value,nested,stringValue,structValue.a.b,structValue.c"


def test_one_field_named_twice_in_the_query_is_400(client: Client) -> None:
    status, _, body = client.get("/v1/shelves/1/books?page_size=1&pageSize=2")
    assert status == 400
    assert_status_body(body, 3)
    assert 'query parameter "pageSize": given more than once' in body["message"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("author=%zz", 'query parameter "author": invalid percent-encoding'),
        ("author=100%", 'query parameter "author": invalid percent-encoding'),
        ("author=%ff", 'query parameter "author": not UTF-8'),
    ],
)
def test_malformed_query_escapes_are_400(client: Client, query: str, message: str) -> None:
    status, _, body = client.get(f"/v1/shelves/1/books?{query}")
    assert status == 400
    assert_status_body(body, 3)
    assert body["message"] == message


@pytest.mark.parametrize("value", ["a!b@", "aGVsbG8=x", "A"])
def test_bytes_that_are_not_base64_are_400(client: Client, value: str) -> None:
    status, _, body = client.post("/v1/kitchens", {"bytesValue": value})
    assert status == 400
    assert_status_body(body, 3)
    assert body["message"] == 'invalid JSON body: field "bytes_value": not valid base64'


def test_x_http_code_metadata_sets_the_status(client: Client) -> None:
    # The pattern grpc-gateway's docs give for "Controlling HTTP Response Status Codes".
    status, headers, body = client.post("/v1/kitchens", {}, headers={"Grpc-Metadata-X-Echo-Header-X-Http-Code": "201"})
    assert status == 201 and body["stringValue"] == ""
    assert "Grpc-Metadata-X-Http-Code" not in headers
    status, headers, body = client.post("/v1/kitchens", {}, headers={"Grpc-Metadata-X-Echo-Header-X-Http-Code": "204"})
    assert status == 204 and body == b""
    status, headers, body = client.post("/v1/kitchens", {}, headers={"Grpc-Metadata-X-Echo-Header-X-Http-Code": "99"})
    assert status == 200 and headers["Grpc-Metadata-X-Http-Code"] == "99"  # not a status: left visible
    # An error keeps the status of its gRPC code.
    headers = {"Grpc-Metadata-X-Echo-Header-X-Http-Code": "201", ECHO_CODE: "5"}
    assert client.post("/v1/kitchens", {}, headers=headers)[0] == 404
