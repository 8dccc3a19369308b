"""Response bytes -> JSON, as grpc-gateway v2's default marshaler writes them."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from transcoder.descriptors import DescriptorIndex, MethodInfo
from transcoder.errors import TranscodeError
from transcoder.response import JsonOptions, render_message, render_response, render_status_details
from transcoder.status import Code

SERVICE = "protogate.test.v1.KitchenService"
NESTED_URL = "type.googleapis.com/protogate.test.v1.Nested"


@pytest.fixture
def index(kitchen_index: DescriptorIndex) -> DescriptorIndex:
    return kitchen_index


def _kitchen(index: DescriptorIndex, **fields: Any) -> Message:
    return index.message_class("protogate.test.v1.Kitchen")(**fields)


def _nested(index: DescriptorIndex, **fields: Any) -> Message:
    return index.message_class("protogate.test.v1.Nested")(**fields)


def _render(message: Message, **options: Any) -> Any:
    return json.loads(render_message(message, JsonOptions(**options)))


def test_nested_default_output_is_compact_and_in_declaration_order(index: DescriptorIndex) -> None:
    out = render_message(_nested(index, name="n", labels=["a"]))
    assert out == b'{"name":"n","count":0,"color":"COLOR_UNSPECIFIED","child":null,"labels":["a"]}'


def test_empty_kitchen_emits_unpopulated_fields_like_protojson(index: DescriptorIndex) -> None:
    out = _render(_kitchen(index))
    # scalars at their defaults, int64s as strings, repeated [] and maps {}
    assert out["int32Value"] == 0
    assert out["int64Value"] == "0"
    assert out["uint64Value"] == "0"
    assert out["doubleValue"] == 0
    assert out["boolValue"] is False
    assert out["stringValue"] == ""
    assert out["bytesValue"] == ""
    assert out["color"] == "COLOR_UNSPECIFIED"
    assert out["repeatedInt32"] == []
    assert out["stringToInt32"] == {}
    # unset singular messages (WKTs included) are null
    for key in ("nested", "timestamp", "duration", "fieldMask", "structValue", "any", "empty", "wrappedInt64"):
        assert out[key] is None, key
    # oneof members and proto3 optional fields are never emitted when unset
    for key in ("choiceName", "choiceId", "choiceNested", "optionalInt32"):
        assert key not in out
    assert list(out)[:3] == ["doubleValue", "floatValue", "int32Value"]


SCALARS: list[tuple[dict[str, Any], str, Any]] = [
    ({"int64_value": -(2**63)}, "int64Value", "-9223372036854775808"),
    ({"uint64_value": 2**64 - 1}, "uint64Value", "18446744073709551615"),
    ({"sint64_value": -1}, "sint64Value", "-1"),
    ({"fixed64_value": 1}, "fixed64Value", "1"),
    ({"sfixed64_value": -2}, "sfixed64Value", "-2"),
    ({"int32_value": -5}, "int32Value", -5),
    ({"uint32_value": 2**32 - 1}, "uint32Value", 4294967295),
    ({"double_value": 1.0}, "doubleValue", 1),
    ({"double_value": 0.1}, "doubleValue", 0.1),
    ({"double_value": 1e300}, "doubleValue", 1e300),
    ({"double_value": math.nan}, "doubleValue", "NaN"),
    ({"double_value": math.inf}, "doubleValue", "Infinity"),
    ({"double_value": -math.inf}, "doubleValue", "-Infinity"),
    ({"float_value": 0.1}, "floatValue", 0.1),
    ({"float_value": 3.4028234663852886e38}, "floatValue", 3.4028235e38),
    ({"float_value": 16777216.0}, "floatValue", 16777216),
    ({"float_value": math.nan}, "floatValue", "NaN"),
    ({"bool_value": True}, "boolValue", True),
    ({"string_value": "caf\u00e9 \U0001f600"}, "stringValue", "caf\u00e9 \U0001f600"),
    ({"bytes_value": b"\xff\xfe\x00"}, "bytesValue", "//4A"),
    ({"color": 2}, "color", "COLOR_GREEN"),
    ({"color": 42}, "color", 42),
    ({"optional_int32": 0}, "optionalInt32", 0),
    ({"choice_id": 7}, "choiceId", "7"),
    ({"repeated_int64": [1, -2]}, "repeatedInt64", ["1", "-2"]),
    ({"repeated_double": [1.5, math.nan]}, "repeatedDouble", [1.5, "NaN"]),
    ({"repeated_bytes": [b"hi"]}, "repeatedBytes", ["aGk="]),
    ({"colors": [1, 3]}, "colors", ["COLOR_RED", "COLOR_BLUE"]),
    ({"string_to_int32": {"b": 2, "a": 1}}, "stringToInt32", {"a": 1, "b": 2}),
    ({"bool_to_string": {True: "t", False: "f"}}, "boolToString", {"false": "f", "true": "t"}),
    ({"string_to_color": {"x": 1}}, "stringToColor", {"x": "COLOR_RED"}),
]


@pytest.mark.parametrize(("fields", "key", "expected"), SCALARS)
def test_scalar_forms(index: DescriptorIndex, fields: dict[str, Any], key: str, expected: Any) -> None:
    assert _render(_kitchen(index, **fields))[key] == expected


def test_map_with_message_values_is_sorted_by_numeric_key(index: DescriptorIndex) -> None:
    kitchen = _kitchen(index)
    kitchen.int64_to_nested[10].name = "ten"
    kitchen.int64_to_nested[9].name = "nine"
    out = render_message(kitchen, JsonOptions(emit_unpopulated=False))
    assert out == b'{"int64ToNested":{"9":{"name":"nine"},"10":{"name":"ten"}}}'


# Built with text format: the index's private pool has its own copies of the well-known types, so messages from
# google.protobuf's generated modules (the default pool) cannot be assigned to its fields.
WKTS: list[tuple[str, str, Any]] = [
    ("timestamp", "timestamp {}", "1970-01-01T00:00:00Z"),
    ("timestamp", "timestamp { seconds: 1 nanos: 500000000 }", "1970-01-01T00:00:01.500Z"),
    ("timestamp", "timestamp { seconds: -1 nanos: 1000 }", "1969-12-31T23:59:59.000001Z"),
    ("timestamp", "timestamp { seconds: -62135596800 nanos: 1 }", "0001-01-01T00:00:00.000000001Z"),
    ("timestamp", "timestamp { seconds: 253402300799 }", "9999-12-31T23:59:59Z"),
    ("duration", "duration { seconds: 1 nanos: 500000000 }", "1.500s"),
    ("duration", "duration { seconds: -3 nanos: -1 }", "-3.000000001s"),
    ("duration", "duration { nanos: -5000000 }", "-0.005s"),
    ("duration", "duration {}", "0s"),
    ("fieldMask", 'field_mask { paths: "display_name" paths: "a.b_c" }', "displayName,a.bC"),
    ("fieldMask", "field_mask {}", ""),
    (
        "structValue",
        'struct_value { fields { key: "b" value { number_value: 1 } } fields { key: "a" value { bool_value: true } } }',
        {"a": True, "b": 1},
    ),
    ("structValue", "struct_value {}", {}),
    ("value", 'value { string_value: "s" }', "s"),
    ("value", "value { null_value: NULL_VALUE }", None),
    ("value", "value {}", None),
    ("value", "value { number_value: 2.5 }", 2.5),
    ("value", 'value { list_value { values { string_value: "x" } } }', ["x"]),
    ("value", "value { struct_value { } }", {}),
    ("listValue", "list_value { values { null_value: NULL_VALUE } }", [None]),
    ("empty", "empty {}", {}),
    ("wrappedDouble", "wrapped_double { value: inf }", "Infinity"),
    ("wrappedFloat", "wrapped_float { value: 0.1 }", 0.1),
    ("wrappedInt64", "wrapped_int64 { value: -7 }", "-7"),
    ("wrappedUint64", "wrapped_uint64 { value: 7 }", "7"),
    ("wrappedInt32", "wrapped_int32 { }", 0),
    ("wrappedUint32", "wrapped_uint32 { value: 3 }", 3),
    ("wrappedBool", "wrapped_bool { value: false }", False),
    ("wrappedString", "wrapped_string { }", ""),
    ("wrappedBytes", 'wrapped_bytes { value: "hi" }', "aGk="),
]


@pytest.mark.parametrize(("key", "text", "expected"), WKTS)
def test_well_known_types(index: DescriptorIndex, key: str, text: str, expected: Any) -> None:
    kitchen = text_format.Parse(text, _kitchen(index), descriptor_pool=index.pool)
    assert _render(kitchen)[key] == expected


def test_any_forms(index: DescriptorIndex) -> None:
    kitchen = _kitchen(index)
    kitchen.any.Pack(_nested(index, name="in"))
    out = _render(kitchen, emit_unpopulated=False)
    assert out == {"any": {"@type": NESTED_URL, "name": "in"}}
    kitchen.any.Pack(index.message_class("google.protobuf.Timestamp")(seconds=1))
    assert _render(kitchen, emit_unpopulated=False)["any"] == {
        "@type": "type.googleapis.com/google.protobuf.Timestamp",
        "value": "1970-01-01T00:00:01Z",
    }
    inner = index.message_class("google.protobuf.Any")()
    inner.Pack(_nested(index, count=1))
    kitchen.any.Pack(inner)
    assert _render(kitchen, emit_unpopulated=False)["any"] == {
        "@type": "type.googleapis.com/google.protobuf.Any",
        "value": {"@type": NESTED_URL, "count": 1},
    }
    kitchen.any.Clear()
    kitchen.any.SetInParent()
    assert _render(kitchen)["any"] == {}


def test_options(index: DescriptorIndex) -> None:
    kitchen = _kitchen(index, int32_value=1, color=1)
    assert _render(kitchen, use_proto_names=True)["int32_value"] == 1
    assert _render(kitchen, enums_as_ints=True)["color"] == 1
    assert _render(kitchen, enums_as_ints=True)["stringToColor"] == {}
    assert _render(kitchen, emit_unpopulated=False) == {"int32Value": 1, "color": "COLOR_RED"}
    indented = render_message(_nested(index, name="n"), JsonOptions(indent=2, emit_unpopulated=False))
    assert indented == b'{\n  "name": "n"\n}'
    assert JsonOptions() == JsonOptions(use_proto_names=False, emit_unpopulated=True, enums_as_ints=False, indent=None)


def test_round_trip_through_json_format(index: DescriptorIndex) -> None:
    kitchen = _kitchen(
        index,
        double_value=-2.5,
        float_value=1.25,
        int64_value=-3,
        uint64_value=2**64 - 1,
        bytes_value=b"\x00\x01",
        string_value="s",
        color=3,
        repeated_nested=[_nested(index, name="a", child=_nested(index, count=2))],
        string_to_timestamp={"t": index.message_class("google.protobuf.Timestamp")(seconds=5, nanos=7)},
        choice_nested=_nested(index, labels=["x"]),
    )
    kitchen.struct_value.update({"k": [1, "two", None, {"n": False}]})
    kitchen.duration.FromNanoseconds(-1_500_000_000)
    kitchen.field_mask.paths.append("a.b_c")
    kitchen.any.Pack(_nested(index, name="x"))
    kitchen.wrapped_uint64.value = 5
    for options in (JsonOptions(), JsonOptions(use_proto_names=True, enums_as_ints=True, emit_unpopulated=False)):
        parsed = type(kitchen)()
        json_format.Parse(render_message(kitchen, options), parsed, descriptor_pool=index.pool)
        if options.emit_unpopulated:
            # An unset Value field is written as null, which reads back as a Value holding null (as in Go).
            assert parsed.value.WhichOneof("kind") == "null_value"
            parsed.ClearField("value")
        assert parsed == kitchen


def _method(index: DescriptorIndex, name: str) -> MethodInfo:
    return index.method(f"{SERVICE}.{name}")


def test_render_response_whole_message(index: DescriptorIndex) -> None:
    method = _method(index, "GetKitchen")
    data = _kitchen(index, int32_value=3).SerializeToString()
    assert json.loads(render_response(method, data))["int32Value"] == 3
    assert render_response(method, b"", options=JsonOptions(emit_unpopulated=False)) == b"{}"


def test_render_response_empty_message(index: DescriptorIndex) -> None:
    assert render_response(_method(index, "CleanKitchen"), b"") == b"{}"


def test_render_response_body(index: DescriptorIndex) -> None:
    method = _method(index, "ListKitchens")
    response = method.output_class(
        kitchens=[_kitchen(index, int32_value=1), _kitchen(index)], next_page_token="t", total=5
    )
    data = response.SerializeToString()
    compact = JsonOptions(emit_unpopulated=False)
    assert render_response(method, data, "kitchens", compact) == b'[{"int32Value":1},{}]'
    assert render_response(method, data, "next_page_token") == b'"t"'
    assert render_response(method, data, "total") == b'"5"'
    assert render_response(method, b"", "kitchens") == b"[]"
    assert render_response(method, b"", "total") == b'"0"'


def test_response_body_of_an_unset_message_field_is_an_empty_object(index: DescriptorIndex) -> None:
    binding = next(b for b in _method(index, "GetKitchen").bindings)
    method = binding.method
    assert render_response(method, b"", "nested") == b"{}"
    data = method.output_class(nested=_nested(index, name="n")).SerializeToString()
    assert json.loads(render_response(method, data, "nested"))["name"] == "n"
    assert render_response(method, b"", "string_to_int32") == b"{}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp { seconds: 253402300800 }", "Timestamp out of range"),
        ("timestamp { nanos: -1 }", "Timestamp out of range"),
        ("duration { seconds: 1 nanos: -1 }", "Duration out of range"),
        ("duration { seconds: 315576000001 }", "Duration out of range"),
        ("value { number_value: nan }", "google.protobuf.Value cannot hold nan"),
        ('struct_value { fields { key: "x" value { number_value: inf } } }', "cannot hold inf"),
        ('any { type_url: "type.googleapis.com/nope.Nope" }', "Any of unknown type"),
        (f'any {{ type_url: "{NESTED_URL}" value: "\\377" }}', "does not decode"),
        ('field_mask { paths: "Bad" }', "has no lowerCamel JSON form"),
        ('field_mask { paths: "a__b" }', "has no lowerCamel JSON form"),
    ],
)
def test_values_protojson_refuses_are_internal_errors(index: DescriptorIndex, text: str, message: str) -> None:
    method = _method(index, "GetKitchen")
    data = text_format.Parse(text, method.output_class(), descriptor_pool=index.pool).SerializeToString()
    with pytest.raises(TranscodeError) as caught:
        render_response(method, data)
    assert caught.value.code == Code.INTERNAL
    assert caught.value.message.startswith("cannot render protogate.test.v1.Kitchen as JSON: ")
    assert message in caught.value.message


@pytest.mark.parametrize("data", [b"\xff", b"\x0a\x05ab", b"\x08", b"\x72\x02\xc3\x28"])
def test_undecodable_response_is_internal(index: DescriptorIndex, data: bytes) -> None:
    with pytest.raises(TranscodeError) as caught:
        render_response(_method(index, "GetKitchen"), data)
    assert caught.value.code == Code.INTERNAL
    assert "upstream response is not a valid protogate.test.v1.Kitchen" in caught.value.message


def test_unknown_response_body_is_internal(index: DescriptorIndex) -> None:
    with pytest.raises(TranscodeError, match="response_body 'nope' names no field") as caught:
        render_response(_method(index, "GetKitchen"), b"", "nope")
    assert caught.value.code == Code.INTERNAL


def _status_bytes(index: DescriptorIndex) -> bytes:
    status = status_pb2.Status(code=3, message="bad shelf")
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="shelf.theme", description="empty")]
    )
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example.com", metadata={"b": "2", "a": "1"})
    for detail in (bad_request, info, _nested(index, name="n", count=2)):
        status.details.add().Pack(detail)
    status.details.add(type_url="type.googleapis.com/acme.Secret", value=b"\x01\x02")
    return status.SerializeToString()


def test_render_status_details(index: DescriptorIndex) -> None:
    code, message, details = render_status_details(_status_bytes(index), index.pool)
    assert (code, message) == (3, "bad shelf")
    assert details[0] == {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "shelf.theme", "description": "empty", "reason": "", "localizedMessage": None}],
    }
    assert details[1] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "QUOTA",
        "domain": "example.com",
        "metadata": {"a": "1", "b": "2"},
    }
    assert details[2] == {
        "@type": NESTED_URL,
        "name": "n",
        "count": 2,
        "color": "COLOR_UNSPECIFIED",
        "child": None,
        "labels": [],
    }
    assert details[3] == {"@type": "type.googleapis.com/acme.Secret", "value": "AQI="}
    assert next(iter(details[0])) == "@type"
    json.dumps(details)  # plain JSON values only


def test_render_status_details_without_a_pool_uses_the_default_one(index: DescriptorIndex) -> None:
    _, _, details = render_status_details(_status_bytes(index), None)
    assert details[0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert details[2] == {
        "@type": NESTED_URL,
        "value": base64.b64encode(_nested(index, name="n", count=2).SerializeToString()).decode(),
    }


def test_render_status_details_keeps_undecodable_details_raw(index: DescriptorIndex) -> None:
    status = status_pb2.Status(code=5)
    status.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff")
    assert render_status_details(status.SerializeToString(), index.pool) == (
        5,
        "",
        [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "value": "/w=="}],
    )


def test_render_status_details_of_an_empty_status() -> None:
    assert render_status_details(b"", None) == (0, "", [])


@pytest.mark.parametrize("data", [b"\xff\xff", b"\x12\x03ab", b"\x08"])
def test_render_status_details_refuses_garbage(data: bytes) -> None:
    with pytest.raises(TranscodeError) as caught:
        render_status_details(data, None)
    assert caught.value.code == Code.INTERNAL
    assert "grpc-status-details-bin is not a google.rpc.Status" in caught.value.message
