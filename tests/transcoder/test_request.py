"""Path variables, query and JSON body -> the gRPC request message, per the HttpRule."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from transcoder.descriptors import DescriptorIndex, HttpBinding
from transcoder.errors import TranscodeError
from transcoder.request import RequestOptions, build_request, encode_request
from transcoder.status import Code

SERVICE = "protogate.test.v1.KitchenService"
ANY_NESTED = "type.googleapis.com/protogate.test.v1.Nested"


@pytest.fixture
def bindings(kitchen_index: DescriptorIndex) -> dict[str, HttpBinding]:
    def only(method: str, index: int = 0) -> HttpBinding:
        return kitchen_index.method(f"{SERVICE}.{method}").bindings[index]

    return {
        "get": only("GetKitchen"),  # GET /v1/kitchens/{nested.name}
        "get_things": only("GetKitchen", 1),  # GET /v1/{name=things/*}
        "get_numbers": only("GetKitchen", 2),  # GET /v1/numbers/{kitchen.int64_value}/colors/{kitchen.color}
        "create": only("CreateKitchen"),  # POST /v1/kitchens, body "*"
        "update": only("UpdateKitchen"),  # PATCH /v1/{name=kitchens/*}, body "kitchen"
        "put_items": only("UpdateKitchen", 1),  # PUT /v1/{name=kitchens/*}/items, body "items"
        "clean": only("CleanKitchen"),  # POST /v1/{name=kitchens/*}:clean, body "*"
    }


def _expect(message: Message, expected: dict[str, Any]) -> None:
    want = type(message)()
    json_format.ParseDict(expected, want, descriptor_pool=message.DESCRIPTOR.file.pool)
    assert message == want, f"{message}\n!=\n{want}"


ACCEPTED: list[tuple[str, dict[str, str], list[tuple[str, str]], bytes, dict[str, Any]]] = [
    # no body rule: path variables, then query parameters; a body is not read
    ("get", {"nested.name": "n1"}, [], b"", {"nested": {"name": "n1"}}),
    (
        "get",
        {"nested.name": "n1"},
        [("nested.count", "2"), ("name", "q")],
        b"",
        {"nested": {"name": "n1", "count": 2}, "name": "q"},
    ),
    ("get", {"nested.name": "n1"}, [("nested.name", "from-query")], b"", {"nested": {"name": "n1"}}),
    ("get", {"nested.name": "n1"}, [("nested.name", "x"), ("nested.name", "y")], b"", {"nested": {"name": "n1"}}),
    ("get", {"nested.name": "n1"}, [], b"{not json at all", {"nested": {"name": "n1"}}),
    (
        "get_things",
        {"name": "things/7"},
        [("kitchen.color", "COLOR_RED")],
        b"",
        {"name": "things/7", "kitchen": {"color": "COLOR_RED"}},
    ),
    # path values are parsed like query values
    (
        "get_numbers",
        {"kitchen.int64_value": "-42", "kitchen.color": "2"},
        [],
        b"",
        {"kitchen": {"int64Value": "-42", "color": "COLOR_GREEN"}},
    ),
    (
        "get_numbers",
        {"kitchen.int64_value": "1", "kitchen.color": "COLOR_BLUE"},
        [("kitchen.int64Value", "9")],
        b"",
        {"kitchen": {"int64Value": "1", "color": "COLOR_BLUE"}},
    ),
    # body "*": the whole message; the query string is not applied at all
    (
        "create",
        {},
        [("string_value", "ignored"), ("nope", "x")],
        b'{"stringValue": "s", "int64Value": "5"}',
        {"stringValue": "s", "int64Value": "5"},
    ),
    ("create", {}, [], b'{"string_value": "proto names work"}', {"stringValue": "proto names work"}),
    ("create", {}, [], b"", {}),
    ("create", {}, [], b" \r\n\t", {}),
    ("create", {}, [], b"{}", {}),
    (
        "create",
        {},
        [],
        b'{"timestamp": "2020-01-01T00:00:00Z", "duration": "1s", "fieldMask": "a.bC", "wrappedInt64": "3"}',
        {"timestamp": "2020-01-01T00:00:00Z", "duration": "1s", "fieldMask": "a.bC", "wrappedInt64": "3"},
    ),
    (
        "create",
        {},
        [],
        b'{"structValue": {"k": [1, null]}, "value": 2, "listValue": ["x"], "empty": {}}',
        {"structValue": {"k": [1, None]}, "value": 2, "listValue": ["x"], "empty": {}},
    ),
    (
        "create",
        {},
        [],
        b'{"any": {"@type": "' + ANY_NESTED.encode() + b'", "name": "in-any"}}',
        {"any": {"@type": ANY_NESTED, "name": "in-any"}},
    ),
    (
        "create",
        {},
        [],
        b'{"stringToInt32": {"a": 1}, "int64ToNested": {"5": {"name": "five"}}, "stringToColor": {"c": "COLOR_RED"}}',
        {"stringToInt32": {"a": 1}, "int64ToNested": {"5": {"name": "five"}}, "stringToColor": {"c": "COLOR_RED"}},
    ),
    ("create", {}, [], b'{"stringValue": "caf\xc3\xa9 \\ud83d\\ude00"}', {"stringValue": "caf\u00e9 \U0001f600"}),
    # unknown JSON fields are dropped (DiscardUnknown), at any depth
    (
        "create",
        {},
        [],
        b'{"zz": 1, "nested": {"zz": [1], "name": "n"}, "repeatedNested": [{"zz": 1, "count": 1}], '
        b'"int64ToNested": {"1": {"zz": {}}}, "any": {"@type": "' + ANY_NESTED.encode() + b'", "zz": 1, "name": "a"}}',
        {
            "nested": {"name": "n"},
            "repeatedNested": [{"count": 1}],
            "int64ToNested": {"1": {}},
            "any": {"@type": ANY_NESTED, "name": "a"},
        },
    ),
    # body "*" and a path variable: the path wins
    (
        "clean",
        {"name": "kitchens/1"},
        [("name", "ignored")],
        b'{"name": "from-body", "nested": {"name": "n"}}',
        {"name": "kitchens/1", "nested": {"name": "n"}},
    ),
    # body "kitchen": a message field from the body; query skips it (and everything below it) and the path
    (
        "update",
        {"name": "kitchens/1"},
        [("kitchen.int32Value", "9"), ("update_mask", "a,b"), ("name", "x")],
        b'{"int32Value": 3}',
        {"name": "kitchens/1", "kitchen": {"int32Value": 3}, "updateMask": "a,b"},
    ),
    ("update", {"name": "kitchens/1"}, [], b"", {"name": "kitchens/1"}),
    ("update", {"name": "kitchens/1"}, [], b"null", {"name": "kitchens/1"}),
    (
        "update",
        {"name": "kitchens/1"},
        [],
        b'{"zz": 1, "nested": {"name": "n"}}',
        {"name": "kitchens/1", "kitchen": {"nested": {"name": "n"}}},
    ),
    # body "items": a repeated field from a JSON array
    (
        "put_items",
        {"name": "kitchens/1"},
        [("items", "x"), ("update_mask", "title")],
        b'[{"name": "a"}, {"name": "b", "zz": 0}]',
        {"name": "kitchens/1", "items": [{"name": "a"}, {"name": "b"}], "updateMask": "title"},
    ),
    ("put_items", {"name": "kitchens/1"}, [], b"[]", {"name": "kitchens/1"}),
]


@pytest.mark.parametrize(("rule", "variables", "query", "body", "expected"), ACCEPTED)
def test_accepted(
    bindings: dict[str, HttpBinding],
    rule: str,
    variables: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes,
    expected: dict[str, Any],
) -> None:
    message = build_request(bindings[rule], variables, query, body)
    _expect(message, expected)
    assert encode_request(bindings[rule], variables, query, body) == message.SerializeToString()


DEEP = b'{"nested": ' + b'{"child": ' * 150 + b"{}" + b"}" * 150 + b"}"

REFUSED: list[tuple[str, dict[str, str], list[tuple[str, str]], bytes, str]] = [
    # path values that do not fit their field
    (
        "get_numbers",
        {"kitchen.int64_value": "abc", "kitchen.color": "1"},
        [],
        b"",
        'invalid value for field "kitchen.int64_value": "abc" is not a valid int64',
    ),
    (
        "get_numbers",
        {"kitchen.int64_value": "1", "kitchen.color": "PURPLE"},
        [],
        b"",
        'invalid value for field "kitchen.color": "PURPLE" is not a valid protogate.test.v1.Color',
    ),
    # query values
    (
        "get",
        {"nested.name": "n"},
        [("kitchen.int32_value", "x")],
        b"",
        'invalid value for query parameter "kitchen.int32_value"',
    ),
    # malformed JSON
    ("create", {}, [], b"{", "invalid JSON body: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("create", {}, [], b'{"a": 1,}', "invalid JSON body: Expecting property name"),
    ("create", {}, [], b"{} {}", "invalid JSON body: Extra data"),
    ("create", {}, [], b"\xff\xfe{}", "invalid JSON body: not UTF-8"),
    ("create", {}, [], b'{"doubleValue": NaN}', "invalid JSON body: NaN is not valid JSON"),
    ("create", {}, [], b'{"stringValue": "a", "stringValue": "b"}', 'invalid JSON body: duplicate key "stringValue"'),
    ("create", {}, [], b"[" * 50_000 + b"]" * 50_000, "invalid JSON body: nested too deeply"),
    ("create", {}, [], DEEP, "Message too deep"),
    ("create", {}, [], b"[]", "invalid JSON body: expected a JSON object for protogate.test.v1.Kitchen"),
    ("create", {}, [], b'"text"', "invalid JSON body: expected a JSON object"),
    # wrong types and values
    ("create", {}, [], b'{"int32Value": "x"}', 'invalid JSON body: field "int32Value"'),
    ("create", {}, [], b'{"int32Value": 1.5}', 'invalid JSON body: field "int32Value": Couldn\'t parse integer: 1.5'),
    (
        "create",
        {},
        [],
        b'{"int32Value": true}',
        'field "int32Value": Bool value True is not acceptable for integer field',
    ),
    ("create", {}, [], b'{"int32Value": 2147483648}', 'field "int32Value": Value out of range: 2147483648'),
    ("create", {}, [], b'{"int64Value": "9223372036854775808"}', 'field "int64Value": Value out of range'),
    ("create", {}, [], b'{"uint64Value": -1}', 'field "uint64Value": Value out of range'),
    ("create", {}, [], b'{"boolValue": "true"}', 'field "boolValue": Expected true or false without quotes'),
    ("create", {}, [], b'{"stringValue": 1}', 'field "stringValue"'),
    ("create", {}, [], b'{"zz\\ud800": 1}', "invalid JSON body: a string holds an unpaired surrogate"),
    ("create", {}, [], b'{"any": {"@type": "x\\udfff"}}', "invalid JSON body: a string holds an unpaired surrogate"),
    ("create", {}, [], b'{"stringValue": "\\udc80"}', "a string holds an unpaired surrogate"),
    ("create", {}, [], b'{"floatValue": 1e39}', 'field "floatValue": Float value too large'),
    ("create", {}, [], b'{"repeatedInt32": 1}', 'field "repeatedInt32": repeated field repeatedInt32 must be in []'),
    ("create", {}, [], b'{"repeatedInt32": [null]}', 'field "repeatedInt32": null is not allowed'),
    ("create", {}, [], b'{"repeatedNested": [1]}', 'field "repeatedNested"'),
    ("create", {}, [], b'{"nested": 5}', 'field "nested"'),
    (
        "create",
        {},
        [],
        b'{"color": "COLOR_PURPLE"}',
        'field "color": Invalid enum value COLOR_PURPLE for enum type protogate.test.v1.Color',
    ),
    ("create", {}, [], b'{"nested": {"color": "NOPE"}}', 'field "nested.color": Invalid enum value NOPE'),
    ("create", {}, [], b'{"stringToColor": {"a": "NOPE"}}', 'field "stringToColor": Invalid enum value NOPE'),
    ("create", {}, [], b'{"int64ToNested": {"x": {}}}', 'field "int64ToNested"'),
    ("create", {}, [], b'{"choiceName": "a", "choiceId": "1"}', 'multiple "choice" oneof fields'),
    ("create", {}, [], b'{"timestamp": "yesterday"}', 'field "timestamp": Failed to parse timestamp'),
    ("create", {}, [], b'{"duration": "1h"}', 'field "duration"'),
    (
        "create",
        {},
        [],
        b'{"any": {"@type": "type.googleapis.com/nope.Nope"}}',
        'field "any": Can not find message descriptor',
    ),
    ("create", {}, [], b'{"any": {"name": "x"}}', 'field "any": @type is missing'),
    ("create", {}, [], b'{"value": NaN}', "NaN is not valid JSON"),
    # body "field" shapes
    (
        "update",
        {"name": "kitchens/1"},
        [],
        b"[1]",
        "invalid JSON body: expected a JSON object for protogate.test.v1.Kitchen",
    ),
    ("put_items", {"name": "kitchens/1"}, [], b'{"name": "a"}', 'field "items": repeated field items must be in []'),
]


@pytest.mark.parametrize(("rule", "variables", "query", "body", "message"), REFUSED)
def test_refused(
    bindings: dict[str, HttpBinding],
    rule: str,
    variables: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes,
    message: str,
) -> None:
    with pytest.raises(TranscodeError) as caught:
        build_request(bindings[rule], variables, query, body)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.http_status == 400
    assert message in caught.value.message
    assert len(caught.value.message) < 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"zz": 1}', 'invalid JSON body: unknown field "zz" in protogate.test.v1.Kitchen'),
        (b'{"nested": {"zz": 1}}', 'invalid JSON body: field "nested": unknown field "zz" in protogate.test.v1.Nested'),
        (
            b'{"any": {"@type": "' + ANY_NESTED.encode() + b'", "zz": 1}}',
            'invalid JSON body: field "any": unknown field "zz" in protogate.test.v1.Nested',
        ),
    ],
)
def test_strict_body_refuses_unknown_fields(bindings: dict[str, HttpBinding], body: bytes, message: str) -> None:
    with pytest.raises(TranscodeError) as caught:
        build_request(bindings["create"], {}, [], body, RequestOptions(strict_body=True))
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message == message


def test_unknown_fields_do_not_hide_other_errors(bindings: dict[str, HttpBinding]) -> None:
    with pytest.raises(TranscodeError, match='field "color": Invalid enum value NOPE'):
        build_request(bindings["create"], {}, [], b'{"zz": 1, "color": "NOPE"}')


def test_strict_query(bindings: dict[str, HttpBinding]) -> None:
    strict = RequestOptions(strict_query=True)
    with pytest.raises(TranscodeError) as caught:
        build_request(bindings["get"], {"nested.name": "n"}, [("bogus", "1")], b"", strict)
    assert caught.value.message == 'unknown query parameter "bogus"'
    # bound fields are skipped before the unknown-name check
    build_request(bindings["update"], {"name": "k"}, [("kitchen.bogus", "1"), ("name", "x")], b"", strict)
    # body "*" never reads the query string
    build_request(bindings["create"], {}, [("bogus", "1")], b"{}", strict)


def test_options_default_to_grpc_gateway_behaviour() -> None:
    assert RequestOptions() == RequestOptions(strict_query=False, strict_body=False)


def test_the_body_is_parsed_once_per_request_not_mutated_across_requests(bindings: dict[str, HttpBinding]) -> None:
    body = json.dumps({"zz": 1, "nested": {"name": "n"}}).encode()
    first = build_request(bindings["create"], {}, [], body)
    second = build_request(bindings["create"], {}, [], body)
    assert first == second
    assert first is not second


def test_a_field_given_by_both_its_names_is_refused(kitchen_index: DescriptorIndex) -> None:
    binding = next(b for b in kitchen_index.bindings if b.body == "*")
    descriptor = binding.method.input_descriptor
    field = next(f for f in descriptor.fields if f.json_name != f.name and f.type == f.TYPE_STRING)
    body = json.dumps({field.name: "a", field.json_name: "b"}).encode()
    with pytest.raises(TranscodeError) as caught:
        build_request(binding, {}, [], body)
    assert "given twice" in caught.value.message and field.name in caught.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # protojson's bytes: standard or URL-safe alphabet, padded or not; Go's decoder skips CR and LF
        ({"bytesValue": "+/8="}, "+/8="),
        ({"bytesValue": "-_8"}, "+/8="),
        ({"bytesValue": "aGVsbG8"}, "aGVsbG8="),
        ({"bytesValue": "aGVs\nbG8="}, "aGVsbG8="),
        ({"bytesValue": ""}, None),
    ],
)
def test_bytes_accept_both_base64_alphabets(
    bindings: dict[str, HttpBinding], body: dict[str, Any], expected: str | None
) -> None:
    message = build_request(bindings["create"], {}, [], json.dumps(body).encode())
    _expect(message, {"bytesValue": expected} if expected else {})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # json_format would drop the characters it does not know and decode the rest; protojson refuses
        ({"bytesValue": "a!b@"}, "bytes_value"),
        ({"bytesValue": "aGVsbG8=x"}, "bytes_value"),
        ({"bytesValue": "a"}, "bytes_value"),
        ({"bytesValue": "aGVsbG8=="}, "bytes_value"),
        ({"bytesValue": "-_+/"}, "bytes_value"),
        ({"repeatedBytes": ["AA==", "A A"]}, "repeated_bytes"),
        ({"wrappedBytes": "%%%%"}, "wrapped_bytes"),
        ({"nested": {"child": {"name": "x"}}, "int64ToNested": {"1": {"name": "x"}}, "repeatedBytes": ["*"]}, None),
    ],
)
def test_bytes_that_are_not_base64_are_refused(
    bindings: dict[str, HttpBinding], body: dict[str, Any], field: str | None
) -> None:
    with pytest.raises(TranscodeError) as caught:
        build_request(bindings["create"], {}, [], json.dumps(body).encode())
    assert caught.value.http_status == 400
    assert caught.value.message == f'invalid JSON body: field "{field or "repeated_bytes"}": not valid base64'
