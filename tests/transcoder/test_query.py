"""Query parameters -> message fields, grpc-gateway's PopulateQueryParameters rules."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError
from transcoder.query import apply_query_params, load_json, set_field_value
from transcoder.status import Code

KITCHEN = "protogate.test.v1.Kitchen"


@pytest.fixture
def kitchen(kitchen_index: DescriptorIndex) -> Message:
    return kitchen_index.message_class(KITCHEN)()


def _expect(message: Message, expected: dict[str, Any]) -> None:
    want = type(message)()
    json_format.ParseDict(expected, want, descriptor_pool=message.DESCRIPTOR.file.pool)
    assert message == want, f"{message}\n!=\n{want}"


ACCEPTED: list[tuple[list[tuple[str, str]], dict[str, Any]]] = [
    # names: proto name or json name, dotted into nested messages
    ([("string_value", "hi")], {"stringValue": "hi"}),
    ([("stringValue", "hi")], {"stringValue": "hi"}),
    ([("nested.name", "n"), ("nested.child.count", "3")], {"nested": {"name": "n", "child": {"count": 3}}}),
    ([("nested.child.child.labels", "a")], {"nested": {"child": {"child": {"labels": ["a"]}}}}),
    ([("string_value", "")], {}),
    ([("string_value", "a b/%&=")], {"stringValue": "a b/%&="}),
    # integers, with Go's ParseInt/ParseUint syntax and range
    ([("int32_value", "-2147483648")], {"int32Value": -2147483648}),
    ([("int32_value", "+7")], {"int32Value": 7}),
    ([("int32_value", "007")], {"int32Value": 7}),
    ([("int64_value", "9223372036854775807")], {"int64Value": "9223372036854775807"}),
    ([("int64_value", "-9223372036854775808")], {"int64Value": "-9223372036854775808"}),
    ([("uint32_value", "4294967295")], {"uint32Value": 4294967295}),
    ([("uint64_value", "18446744073709551615")], {"uint64Value": "18446744073709551615"}),
    ([("sint32_value", "-5"), ("sint64_value", "-6")], {"sint32Value": -5, "sint64Value": "-6"}),
    ([("fixed32_value", "5"), ("fixed64_value", "6")], {"fixed32Value": 5, "fixed64Value": "6"}),
    ([("sfixed32_value", "-5"), ("sfixed64_value", "-6")], {"sfixed32Value": -5, "sfixed64Value": "-6"}),
    # floats
    ([("double_value", "1.5e3")], {"doubleValue": 1500}),
    ([("double_value", ".5")], {"doubleValue": 0.5}),
    ([("double_value", "-Infinity")], {"doubleValue": "-Infinity"}),
    ([("double_value", "Infinity")], {"doubleValue": "Infinity"}),
    ([("float_value", "3.4e38")], {"floatValue": 3.4e38}),
    ([("float_value", "-inf")], {"floatValue": "-Infinity"}),
    # bools: strconv.ParseBool
    *[([("bool_value", text)], {"boolValue": True}) for text in ("1", "t", "T", "TRUE", "true", "True")],
    *[([("bool_value", text)], {}) for text in ("0", "f", "F", "FALSE", "false", "False")],
    # bytes: standard or URL-safe base64, padding optional
    ([("bytes_value", "aGk=")], {"bytesValue": "aGk="}),
    ([("bytes_value", "aGk")], {"bytesValue": "aGk="}),
    ([("bytes_value", "_-8")], {"bytesValue": "/+8="}),
    ([("bytes_value", "/+8=")], {"bytesValue": "/+8="}),
    ([("bytes_value", "")], {}),
    # enums by name or number
    ([("color", "COLOR_GREEN")], {"color": "COLOR_GREEN"}),
    ([("color", "2")], {"color": "COLOR_GREEN"}),
    ([("nested.color", "COLOR_BLUE")], {"nested": {"color": "COLOR_BLUE"}}),
    ([("colors", "COLOR_RED"), ("colors", "3")], {"colors": ["COLOR_RED", "COLOR_BLUE"]}),
    # repeated: one value per occurrence, commas are not split
    ([("repeated_int32", "1"), ("repeated_int32", "2")], {"repeatedInt32": [1, 2]}),
    ([("repeated_string", "a,b"), ("repeatedString", "c")], {"repeatedString": ["a,b", "c"]}),
    ([("repeated_bytes", "aGk")], {"repeatedBytes": ["aGk="]}),
    ([("repeated_double", "NaN")], {"repeatedDouble": ["NaN"]}),
    ([("repeated_bool", "t"), ("repeated_bool", "0")], {"repeatedBool": [True, False]}),
    ([("repeated_timestamp", "1970-01-01T00:00:01Z")], {"repeatedTimestamp": ["1970-01-01T00:00:01Z"]}),
    # maps
    ([("string_to_int32[a]", "1"), ("string_to_int32[b]", "2")], {"stringToInt32": {"a": 1, "b": 2}}),
    ([("stringToInt32[a.b]", "1")], {"stringToInt32": {"a.b": 1}}),
    ([("string_to_int32[]", "1")], {"stringToInt32": {"": 1}}),
    ([("string_to_int32[a[b]]", "1")], {"stringToInt32": {"a[b]": 1}}),
    ([("string_to_color[x]", "COLOR_RED")], {"stringToColor": {"x": "COLOR_RED"}}),
    ([("bool_to_string[true]", "yes")], {"boolToString": {"true": "yes"}}),
    ([("string_to_timestamp[t]", "2000-01-01T00:00:00Z")], {"stringToTimestamp": {"t": "2000-01-01T00:00:00Z"}}),
    # oneof: one member
    ([("choice_name", "x")], {"choiceName": "x"}),
    ([("choice_nested.name", "x")], {"choiceNested": {"name": "x"}}),
    ([("choice_nested.name", "x"), ("choice_nested.count", "2")], {"choiceNested": {"name": "x", "count": 2}}),
    ([("optional_int32", "0")], {"optionalInt32": 0}),
    # well-known types
    ([("timestamp", "2024-02-29T12:30:00Z")], {"timestamp": "2024-02-29T12:30:00Z"}),
    ([("timestamp", "2024-01-01T01:00:00.123456789+01:00")], {"timestamp": "2024-01-01T00:00:00.123456789Z"}),
    ([("timestamp", "1969-12-31T23:59:59.5-00:30")], {"timestamp": "1970-01-01T00:29:59.500Z"}),
    ([("duration", "1.5s")], {"duration": "1.5s"}),
    ([("duration", "-0.25s")], {"duration": "-0.25s"}),
    ([("duration", "315576000000s")], {"duration": "315576000000s"}),
    ([("duration", "1h2m3.5s")], {"duration": "3723.5s"}),
    ([("duration", "300ms")], {"duration": "0.3s"}),
    ([("duration", "-1.5h")], {"duration": "-5400s"}),
    ([("duration", "1us"), ("nested.name", "x")], {"duration": "0.000001s", "nested": {"name": "x"}}),
    ([("duration", "2µs")], {"duration": "0.000002s"}),
    ([("duration", "7ns")], {"duration": "0.000000007s"}),
    ([("duration", "0")], {"duration": "0s"}),
    ([("field_mask", "displayName,nested.childCount")], {"fieldMask": "displayName,nested.childCount"}),
    ([("field_mask", "display_name,,title")], {"fieldMask": "displayName,title"}),
    ([("field_mask", "")], {"fieldMask": ""}),
    ([("wrapped_double", "1.5"), ("wrapped_float", "2.5")], {"wrappedDouble": 1.5, "wrappedFloat": 2.5}),
    ([("wrapped_int64", "-9"), ("wrapped_uint64", "9")], {"wrappedInt64": "-9", "wrappedUint64": "9"}),
    ([("wrapped_int32", "-3"), ("wrapped_uint32", "3")], {"wrappedInt32": -3, "wrappedUint32": 3}),
    ([("wrapped_bool", "false"), ("wrapped_string", "")], {"wrappedBool": False, "wrappedString": ""}),
    ([("wrapped_bytes", "aGk")], {"wrappedBytes": "aGk="}),
    ([("struct_value", '{"a": [1, "x", null, true]}')], {"structValue": {"a": [1, "x", None, True]}}),
    ([("value", '"text"')], {"value": "text"}),
    ([("value", "null")], {"value": None}),
    ([("list_value", "[1, {}]")], {"listValue": [1, {}]}),
    # unknown names are ignored when not strict
    ([("nope", "1"), ("nested.nope", "1"), ("", "1"), ("string_value", "kept")], {"stringValue": "kept"}),
]


@pytest.mark.parametrize(("params", "expected"), ACCEPTED)
def test_accepted(kitchen: Message, params: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    apply_query_params(kitchen, params)
    _expect(kitchen, expected)


REFUSED: list[tuple[list[tuple[str, str]], str]] = [
    ([("int32_value", "abc")], 'invalid value for query parameter "int32_value": "abc" is not a valid int32'),
    ([("int32_value", "2147483648")], '"2147483648" is out of range for int32'),
    ([("int32_value", "1.0")], "is not a valid int32"),
    ([("int32_value", " 1")], "is not a valid int32"),
    ([("int32_value", "1_000")], "is not a valid int32"),
    ([("int32_value", "")], '"" is not a valid int32'),
    ([("int64_value", "9223372036854775808")], "out of range for int64"),
    ([("int64_value", "1" * 5000)], "out of range for int64"),
    ([("uint32_value", "-1")], "is not a valid uint32"),
    ([("uint32_value", "+1")], "is not a valid uint32"),
    ([("uint64_value", "18446744073709551616")], "out of range for uint64"),
    ([("sint32_value", "0x10")], "is not a valid int32"),
    ([("fixed32_value", "4294967296")], "out of range for uint32"),
    ([("double_value", "1e400")], "out of range for double"),
    ([("double_value", "1,5")], "is not a valid double"),
    ([("double_value", "1_0")], "is not a valid double"),
    ([("float_value", "3.5e38")], "out of range for float"),
    ([("bool_value", "yes")], '"yes" is not a valid bool'),
    ([("bytes_value", "a")], "is not valid base64"),
    ([("bytes_value", "a$b=")], "is not valid base64"),
    ([("color", "COLOR_PURPLE")], '"COLOR_PURPLE" is not a valid protogate.test.v1.Color'),
    ([("color", "9")], '"9" is not a valid protogate.test.v1.Color'),
    ([("colors", "1"), ("colors", "nope")], '"nope" is not a valid protogate.test.v1.Color'),
    ([("string_to_color[x]", "COLOR_PURPLE")], "is not a valid protogate.test.v1.Color"),
    ([("int64_to_nested[1]", "x")], "is a protogate.test.v1.Nested message"),
    ([("bool_to_string[yes]", "x")], '"yes" is not a valid bool'),
    ([("string_to_int32", "1")], "is a map: give each entry as string_to_int32[key]=value"),
    ([("string_value[x]", "1")], '"string_value" is not a map field'),
    ([("string_to_int32[a]", "1"), ("string_to_int32[a]", "2")], "given more than once"),
    ([("string_value", "a"), ("string_value", "b")], 'query parameter "string_value": given more than once'),
    # one field under both its names is one field given twice (grpc-gateway's result would depend on map order)
    ([("int32_value", "1"), ("int32Value", "2")], 'query parameter "int32Value": given more than once'),
    ([("string_to_int32[a]", "1"), ("stringToInt32[a]", "2")], "given more than once"),
    ([("choice_name", "a"), ("choice_id", "1")], 'field "choice_name" of oneof "choice" is already set'),
    ([("choice_id", "1"), ("choice_nested.name", "x")], 'field "choice_id" of oneof "choice" is already set'),
    ([("choice_name", "a"), ("choice_name", "b")], "given more than once"),
    ([("nested", "x")], '"nested" is a protogate.test.v1.Nested message: name one of its fields'),
    ([("repeated_nested", "x")], "is a protogate.test.v1.Nested message"),
    ([("any", "x")], "is a google.protobuf.Any message"),
    ([("empty", "")], "is a google.protobuf.Empty message"),
    ([("repeated_nested.name", "x")], '"repeated_nested" is repeated: a parameter cannot name a field inside it'),
    ([("string_value.x", "x")], '"string_value" is not a message'),
    ([("timestamp.seconds", "1")], '"timestamp" is not a message'),
    ([("timestamp", "2024-01-01")], "is not an RFC 3339 timestamp"),
    ([("timestamp", "2024-02-30T00:00:00Z")], "is not an RFC 3339 timestamp: day is out of range"),
    ([("timestamp", "2024-01-01t00:00:00Z")], "is not an RFC 3339 timestamp"),
    ([("timestamp", "0001-01-01T00:00:00+01:00")], "out of range for google.protobuf.Timestamp"),
    ([("duration", "1.5")], "is not a duration"),
    ([("duration", "1d")], "is not a duration"),
    ([("duration", ".s")], "is not a duration"),
    ([("duration", "")], "is not a duration"),
    ([("duration", "315576000001s")], "out of range for google.protobuf.Duration"),
    ([("duration", "2562048h")], "out of range for a duration"),
    ([("wrapped_int32", "2147483648")], "out of range for int32"),
    ([("wrapped_bool", "maybe")], "is not a valid bool"),
    ([("struct_value", "[1]")], "invalid Struct"),
    ([("struct_value", "{")], "invalid JSON"),
    ([("struct_value", '{"a": 1, "a": 2}')], 'duplicate key "a"'),
    ([("value", "NaN")], "NaN is not valid JSON"),
    ([("list_value", "{}")], "invalid ListValue"),
    ([("string_value", "bad \udc80 surrogate")], 'invalid value for query parameter "string_value"'),
]


@pytest.mark.parametrize(("params", "message"), REFUSED)
def test_refused(kitchen: Message, params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(TranscodeError) as caught:
        apply_query_params(kitchen, params)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.http_status == 400
    assert message in caught.value.message


def test_strict_refuses_unknown_names(kitchen: Message) -> None:
    for key in ("nope", "nested.nope", "nested.child.nope[x]"):
        with pytest.raises(TranscodeError) as caught:
            apply_query_params(kitchen, [(key, "1")], strict=True)
        assert caught.value.code == Code.INVALID_ARGUMENT
        assert caught.value.message == f'unknown query parameter "{key}"'


def test_strict_accepts_known_names(kitchen: Message) -> None:
    apply_query_params(kitchen, [("nested.name", "x")], strict=True)
    _expect(kitchen, {"nested": {"name": "x"}})


@pytest.mark.parametrize(
    "key", ["nested", "nested.name", "nested.child.count", "nested.nope", "nested.child.nope", "stringValue"]
)
def test_skip_ignores_bound_paths_and_below(kitchen: Message, key: str) -> None:
    apply_query_params(kitchen, [(key, "1")], skip={"nested", "string_value"}, strict=True)
    _expect(kitchen, {})


def test_skip_matches_by_field_not_by_spelling(kitchen: Message) -> None:
    # "nested.child" is bound: its json-name spelling is skipped too, a sibling is not.
    apply_query_params(kitchen, [("nested.child.name", "a"), ("nested.count", "2")], skip=["nested.child"])
    _expect(kitchen, {"nested": {"count": 2}})


def test_empty_params_leave_the_message_alone(kitchen: Message) -> None:
    apply_query_params(kitchen, [])
    _expect(kitchen, {})


def test_a_field_already_set_by_the_path_is_overwritten_only_in_its_oneof(kitchen: Message) -> None:
    set_field_value(kitchen, "choice_name", "from-path")
    with pytest.raises(TranscodeError, match='field "choice_name" of oneof "choice" is already set'):
        apply_query_params(kitchen, [("choice_id", "1")])


def test_set_field_value_parses_like_a_query_value(kitchen: Message) -> None:
    set_field_value(kitchen, "nested.child.count", "12")
    set_field_value(kitchen, "timestamp", "2000-01-01T00:00:00Z")
    _expect(kitchen, {"nested": {"child": {"count": 12}}, "timestamp": "2000-01-01T00:00:00Z"})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("int64_value", "abc", 'invalid value for field "int64_value": "abc" is not a valid int64'),
        ("nested.count", "1.5", 'invalid value for field "nested.count": "1.5" is not a valid int32'),
        ("nope", "x", 'field "nope": no such field in protogate.test.v1.Kitchen'),
        ("string_to_int32", "x", 'field "string_to_int32": a path cannot fill a map'),
        ("nested", "x", "is a protogate.test.v1.Nested message"),
    ],
)
def test_set_field_value_refuses(kitchen: Message, path: str, value: str, message: str) -> None:
    with pytest.raises(TranscodeError) as caught:
        set_field_value(kitchen, path, value)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert message in caught.value.message


def test_set_field_value_splits_a_repeated_field_on_commas(kitchen: Message) -> None:
    # grpc-gateway's default separator for a repeated field bound in the path (`/v1/{ids}` with "1,2,3").
    kitchen.repeated_int64.append(9)  # what the body gave is replaced, as a scalar would be
    set_field_value(kitchen, "repeated_int64", "1,2,3")
    set_field_value(kitchen, "colors", "COLOR_RED,2")
    set_field_value(kitchen, "nested.labels", "a")
    _expect(
        kitchen, {"repeatedInt64": ["1", "2", "3"], "colors": ["COLOR_RED", "COLOR_GREEN"], "nested": {"labels": ["a"]}}
    )
    with pytest.raises(TranscodeError, match='"x" is not a valid int64'):
        set_field_value(kitchen, "repeated_int64", "1,x")


def test_long_values_are_not_echoed_whole(kitchen: Message) -> None:
    with pytest.raises(TranscodeError) as caught:
        apply_query_params(kitchen, [("int32_value", "x" * 10_000)])
    assert len(caught.value.message) < 200


def test_resolution_cache_stays_bounded(kitchen: Message) -> None:
    from transcoder import query

    for i in range(query._CACHE_LIMIT + 10):
        apply_query_params(kitchen, [(f"made_up_{i}", "1")])
    assert len(query._CACHE) <= query._CACHE_LIMIT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"a": 1, "a": 1}', 'duplicate key "a"'),
        (b"[" * 100_000, "nested too deeply"),
        (b"Infinity", "Infinity is not valid JSON"),
        (b'"\\udc80"', "a string holds an unpaired surrogate"),
        (b"1" * 5000, "x"),
    ],
)
def test_load_json_refuses(text: bytes, message: str) -> None:
    with pytest.raises(TranscodeError) as caught:
        load_json(text, "x")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message.startswith("x: ")
    assert message in caught.value.message
