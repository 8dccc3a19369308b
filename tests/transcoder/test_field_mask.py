"""Update-mask inference, as grpc-gateway's runtime.FieldMaskFromRequestBody and its PATCH handlers do it."""

from __future__ import annotations

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import pytest
from protoc import compile_descriptor_set

from transcoder.descriptors import DescriptorIndex, HttpBinding
from transcoder.errors import TranscodeError
from transcoder.field_mask import field_mask_from_body, infer_update_mask, mask_field
from transcoder.matcher import Match, RuleMatcher
from transcoder.request import build_request
from transcoder.status import Code

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

# Two PATCH rules: a mask under another name than update_mask, and a request with two masks (none is inferred).
MASKS_PROTO = """
syntax = "proto3";
package masks.v1;
import "google/api/annotations.proto";
import "google/protobuf/field_mask.proto";
message Item { string title = 1; int32 size = 2; }
message PatchItemRequest { Item item = 1; google.protobuf.FieldMask fields = 2; }
message PatchTwiceRequest { Item item = 1; google.protobuf.FieldMask a = 2; google.protobuf.FieldMask b = 3; }
service Items {
  rpc PatchItem(PatchItemRequest) returns (Item) { option (google.api.http) = {patch: "/items" body: "item"}; }
  rpc PatchTwice(PatchTwiceRequest) returns (Item) { option (google.api.http) = {patch: "/twice" body: "item"}; }
}
"""


@pytest.fixture(scope="module")
def bookstore() -> DescriptorIndex:
    spec = spec_from_file_location("bookstore_build_for_field_mask", QUICKSTART / "build.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return DescriptorIndex.from_file(module.build())


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory) -> DescriptorIndex:
    root = tmp_path_factory.mktemp("masks")
    (root / "masks.proto").write_text(MASKS_PROTO)
    return DescriptorIndex.from_bytes(compile_descriptor_set([root / "masks.proto"], [root]))


def _match(index: DescriptorIndex, method: str, path: str) -> Match:
    match = RuleMatcher.build(index.bindings).match(method, path)
    assert match is not None
    return match


def _infer(binding: HttpBinding, variables: dict[str, str], body: bytes) -> Any:
    message = build_request(binding, variables, [], body)
    infer_update_mask(binding, message, body)
    return message


# --- field_mask_from_body ------------------------------------------------------------------------------------------


def test_paths_are_proto_names_sorted(bookstore: DescriptorIndex) -> None:
    book = bookstore.message_class("bookstore.v1.Book").DESCRIPTOR
    document = {"title": "T", "createTime": "2024-01-01T00:00:00Z", "tags": [], "publish_time": None}
    # grpc-gateway sorts, so the mask does not depend on the order of the body's keys.
    assert field_mask_from_body(book, document) == ["create_time", "publish_time", "tags", "title"]
    assert field_mask_from_body(book, ["not", "an", "object"]) == []
    assert field_mask_from_body(book, {}) == []


@pytest.mark.parametrize(
    "document",
    [{"title": "T", "nope": 1}, {"titel": "typo"}],
)
def test_a_key_that_names_no_field_is_refused(bookstore: DescriptorIndex, document: dict[str, Any]) -> None:
    book = bookstore.message_class("bookstore.v1.Book").DESCRIPTOR
    with pytest.raises(TranscodeError) as caught:
        field_mask_from_body(book, document)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "names no field of bookstore.v1.Book" in caught.value.message


def test_nested_messages_are_walked_and_unknown_keys_inside_refused(kitchen_index: DescriptorIndex) -> None:
    kitchen = kitchen_index.message_class("protogate.test.v1.Kitchen").DESCRIPTOR
    document = {"nested": {"name": "n", "child": {"count": 2}}, "int32Value": 1}
    assert field_mask_from_body(kitchen, document) == ["int32_value", "nested.child.count", "nested.name"]
    with pytest.raises(TranscodeError) as caught:
        field_mask_from_body(kitchen, {"nested": {"child": {"nope": 1}}})
    assert '"nested.child.nope" names no field of protogate.test.v1.Nested' in caught.value.message


@pytest.mark.parametrize(
    ("document", "paths"),
    [
        # An empty object still names its field; repeated fields and maps end the path (field_mask.proto).
        ({"nested": {}}, ["nested"]),
        ({"repeatedNested": [{"name": "x"}]}, ["repeated_nested"]),
        ({"int64ToNested": {"1": {"name": "x"}}}, ["int64_to_nested"]),
        # Well-known types are leaves whatever their JSON looks like.
        (
            {"timestamp": "2024-01-01T00:00:00Z", "duration": "1s", "fieldMask": "a"},
            ["duration", "field_mask", "timestamp"],
        ),
        ({"any": {"@type": "type.googleapis.com/google.protobuf.Empty"}}, ["any"]),
        ({"wrappedInt64": "5", "listValue": [1]}, ["list_value", "wrapped_int64"]),
        # Inside a Struct or Value the JSON keys continue the path; an empty object adds nothing.
        ({"structValue": {"a": 1, "b": {"c": True, "d": {}}}}, ["struct_value.a", "struct_value.b.c"]),
        ({"structValue": {}}, []),
        ({"value": {"k": [1, 2]}}, ["value.k"]),
        ({"value": "text"}, ["value"]),
        ({"nested": None}, ["nested"]),
    ],
)
def test_leaves_and_free_form_json(kitchen_index: DescriptorIndex, document: dict[str, Any], paths: list[str]) -> None:
    kitchen = kitchen_index.message_class("protogate.test.v1.Kitchen").DESCRIPTOR
    assert field_mask_from_body(kitchen, document) == paths


def test_depth_is_bounded(kitchen_index: DescriptorIndex) -> None:
    kitchen = kitchen_index.message_class("protogate.test.v1.Kitchen").DESCRIPTOR
    document: dict[str, Any] = {"name": "leaf"}
    for _ in range(100):
        document = {"child": document}
    (path,) = field_mask_from_body(kitchen, {"nested": document})
    assert path.startswith("nested.child.child.") and path.count(".") < 40


# --- mask_field and infer_update_mask ------------------------------------------------------------------------------


def test_the_mask_field_is_the_one_field_mask_whatever_its_name(masks: DescriptorIndex) -> None:
    patch_item = masks.method("masks.v1.Items.PatchItem").input_descriptor
    patch_twice = masks.method("masks.v1.Items.PatchTwice").input_descriptor
    mask = mask_field(patch_item)
    assert mask is not None and mask.name == "fields"
    assert mask_field(patch_twice) is None  # two masks: grpc-gateway cannot tell which one to fill, nor do we
    assert mask_field(masks.message_class("masks.v1.Item").DESCRIPTOR) is None


def test_infer_fills_a_mask_named_otherwise(masks: DescriptorIndex) -> None:
    match = _match(masks, "PATCH", "/items")
    message = _infer(match.binding, match.variables, b'{"size": 3, "title": "t"}')
    assert list(message.fields.paths) == ["size", "title"]
    match = _match(masks, "PATCH", "/twice")
    message = _infer(match.binding, match.variables, b'{"size": 3}')
    assert not message.a.paths and not message.b.paths


def test_infer_on_patch_without_mask(bookstore: DescriptorIndex) -> None:
    match = _match(bookstore, "PATCH", "/v1/shelves/1/books/7")
    body = b'{"title": "New", "pages": 0, "tags": []}'
    message = build_request(match.binding, match.variables, [], body)
    assert infer_update_mask(match.binding, message, body)
    assert list(message.update_mask.paths) == ["pages", "tags", "title"]
    assert message.book.id == 7


def test_infer_refuses_a_body_key_that_names_no_field(bookstore: DescriptorIndex) -> None:
    # The body parser drops unknown keys (DiscardUnknown); the mask would then change nothing the client asked
    # for, so grpc-gateway refuses the request instead, and so do we.
    match = _match(bookstore, "PATCH", "/v1/shelves/1/books/7")
    body = b'{"titel": "typo"}'
    message = build_request(match.binding, match.variables, [], body)
    with pytest.raises(TranscodeError) as caught:
        infer_update_mask(match.binding, message, body)
    assert caught.value.http_status == 400 and '"titel" names no field' in caught.value.message


def test_infer_leaves_a_query_mask_alone(bookstore: DescriptorIndex) -> None:
    match = _match(bookstore, "PATCH", "/v1/shelves/1/books/7")
    body = b'{"title": "New", "pages": 0, "nope": 1}'
    message = build_request(match.binding, match.variables, [("update_mask", "title")], body)
    assert not infer_update_mask(match.binding, message, body)
    assert list(message.update_mask.paths) == ["title"]


def test_infer_only_for_patch_with_a_body_field(bookstore: DescriptorIndex) -> None:
    match = _match(bookstore, "POST", "/v1/shelves/1/books")  # CreateBook: no mask field
    message = build_request(match.binding, match.variables, [], b'{"title": "x"}')
    assert not infer_update_mask(match.binding, message, b'{"title": "x"}')
    match = _match(bookstore, "PATCH", "/v1/shelves/1/books/7")
    assert not infer_update_mask(match.binding, build_request(match.binding, match.variables, [], b""), b"")
    assert not infer_update_mask(match.binding, build_request(match.binding, match.variables, [], b"{}"), b"{}")
    with pytest.raises(TranscodeError):
        infer_update_mask(match.binding, build_request(match.binding, match.variables, [], b"{}"), b"{bad")
