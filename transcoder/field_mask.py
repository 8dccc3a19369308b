"""grpc-gateway's update-mask inference: a PATCH body's JSON keys -> the request's `update_mask` paths."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from transcoder.descriptors import HttpBinding
from transcoder.errors import TranscodeError
from transcoder.status import Code

__all__ = ["field_mask_from_body", "infer_update_mask"]

UPDATE_MASK = "update_mask"
_FIELD_MASK = "google.protobuf.FieldMask"
# Messages whose JSON form is not a plain object of fields: a key inside them names no proto field.
_LEAF_MESSAGES = frozenset(
    {
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)


def field_mask_from_body(descriptor: Descriptor, document: Any) -> list[str]:
    """The proto paths of every leaf key in `document`, as runtime.FieldMaskFromRequestBody builds them.

    Objects under message fields are walked; maps, well-known types and non-objects are leaves. Keys that
    name no field (by proto or JSON name) are skipped: the body parser decides whether they are an error.
    """
    paths: list[str] = []
    if isinstance(document, dict):
        _walk(descriptor, document, "", paths, 0)
    return paths


def _walk(descriptor: Descriptor, document: dict[str, Any], prefix: str, paths: list[str], depth: int) -> None:
    json_names = {f.json_name: f for f in descriptor.fields}
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key) or json_names.get(key)
        if field is None:
            continue
        path = f"{prefix}{field.name}"
        child = field.message_type
        nested = (
            child is not None
            and isinstance(value, dict)
            and value
            and not field.is_repeated
            and not child.GetOptions().map_entry
            and child.full_name not in _LEAF_MESSAGES
            and depth < 32
        )
        if nested:
            _walk(child, value, f"{path}.", paths, depth + 1)
        else:
            paths.append(path)


def infer_update_mask(binding: HttpBinding, message: Message, body: bytes) -> bool:
    """Fill `update_mask` from the body's keys when grpc-gateway would; True when it did.

    That is: a PATCH whose rule binds the body to one field (not "*"), an input message with a
    google.protobuf.FieldMask field named update_mask, and no paths set for it by the query string.
    """
    if binding.http_method != "PATCH" or not binding.body or binding.body == "*" or not body.strip():
        return False
    descriptor = message.DESCRIPTOR
    mask_field = descriptor.fields_by_name.get(UPDATE_MASK)
    if mask_field is None or mask_field.message_type is None or mask_field.message_type.full_name != _FIELD_MASK:
        return False
    mask = getattr(message, UPDATE_MASK)
    if mask.paths:
        return False
    body_field = descriptor.fields_by_name[binding.body]
    if body_field.message_type is None:
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise TranscodeError(Code.INVALID_ARGUMENT, "invalid JSON body") from None
    paths = field_mask_from_body(body_field.message_type, document)
    mask.paths.extend(paths)
    return bool(paths)
