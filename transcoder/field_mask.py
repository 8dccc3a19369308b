"""grpc-gateway's update-mask inference: a PATCH body's JSON keys -> the request's FieldMask paths."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from transcoder.descriptors import HttpBinding
from transcoder.errors import TranscodeError
from transcoder.query import load_json
from transcoder.status import Code

__all__ = ["field_mask_from_body", "infer_update_mask", "mask_field"]

_FIELD_MASK = "google.protobuf.FieldMask"
# Free-form JSON: its own keys continue the path (grpc-gateway's buildPathsBlindly).
_DYNAMIC = frozenset({"google.protobuf.Struct", "google.protobuf.Value"})
# Messages whose JSON form is not a plain object of fields: a key inside them names no proto field.
_LEAF_MESSAGES = frozenset(
    {
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)
_MAX_DEPTH = 32  # deeper objects end the path where they start, as a leaf
_MASK_FIELDS: dict[Descriptor, FieldDescriptor | None] = {}


def field_mask_from_body(descriptor: Descriptor, document: Any) -> list[str]:
    """The proto paths of every leaf key in `document`, sorted, as runtime.FieldMaskFromRequestBody builds them.

    Objects under message fields are walked; repeated fields, maps, well-known types and non-objects are leaves;
    inside a Struct or Value the JSON keys themselves continue the path. A key that names no field (by proto or
    JSON name) is TranscodeError(INVALID_ARGUMENT), as in grpc-gateway: the mask would silently leave it out,
    and the update would not do what the client asked.
    """
    paths: list[str] = []
    if isinstance(document, dict):
        _walk(descriptor, document, "", paths, 0)
    return sorted(paths)


def _walk(descriptor: Descriptor, document: dict[str, Any], prefix: str, paths: list[str], depth: int) -> None:
    json_names = {f.json_name: f for f in descriptor.fields}
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key) or json_names.get(key)
        if field is None:
            raise TranscodeError(
                Code.INVALID_ARGUMENT,
                f"invalid JSON body: cannot infer the update mask: {json.dumps(prefix + key)} names no field "
                f"of {descriptor.full_name}",
            )
        path = f"{prefix}{field.name}"
        child = field.message_type
        if child is not None and not field.is_repeated and child.full_name in _DYNAMIC:
            _walk_free_form(path, value, paths, depth + 1)
        elif (
            child is not None
            and isinstance(value, dict)
            and value
            and not field.is_repeated  # a repeated field (or a map) ends the path, as field_mask.proto says
            and child.full_name not in _LEAF_MESSAGES
            and depth < _MAX_DEPTH
        ):
            _walk(child, value, f"{path}.", paths, depth + 1)
        else:
            paths.append(path)


def _walk_free_form(path: str, value: Any, paths: list[str], depth: int) -> None:
    if not isinstance(value, dict) or depth >= _MAX_DEPTH:
        paths.append(path)
        return
    for key, item in value.items():  # an empty object adds nothing, as in grpc-gateway
        if isinstance(item, dict):
            _walk_free_form(f"{path}.{key}", item, paths, depth + 1)
        else:
            paths.append(f"{path}.{key}")


def mask_field(descriptor: Descriptor) -> FieldDescriptor | None:
    """The request's one google.protobuf.FieldMask field, whatever its name; None when it has none or several
    (grpc-gateway's rule: with two masks it cannot tell which one the body should fill)."""
    if descriptor in _MASK_FIELDS:
        return _MASK_FIELDS[descriptor]
    masks = [
        f
        for f in descriptor.fields
        if f.message_type is not None and f.message_type.full_name == _FIELD_MASK and not f.is_repeated
    ]
    found = _MASK_FIELDS[descriptor] = masks[0] if len(masks) == 1 else None
    return found


def infer_update_mask(binding: HttpBinding, message: Message, body: bytes) -> bool:
    """Fill the request's FieldMask from the body's keys when grpc-gateway would; True when it did.

    That is: a PATCH whose rule binds the body to one message field (not "*"), an input message with exactly
    one google.protobuf.FieldMask field (`update_mask` by convention, any name works), and no paths set for
    it by the query string. A body key that names no field is TranscodeError(INVALID_ARGUMENT).
    """
    if binding.http_method != "PATCH" or not binding.body or binding.body == "*" or not body.strip():
        return False
    descriptor = message.DESCRIPTOR
    target = mask_field(descriptor)
    if target is None:
        return False
    mask = getattr(message, target.name)
    if mask.paths:
        return False
    body_field = descriptor.fields_by_name[binding.body]
    if body_field.message_type is None or body_field.is_repeated:
        return False
    paths = field_mask_from_body(body_field.message_type, load_json(body, "invalid JSON body"))
    mask.paths.extend(paths)
    return bool(paths)
