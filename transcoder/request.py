"""HTTP request parts (path variables, query, JSON body) -> the gRPC request message, per the HttpRule."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from transcoder.descriptors import HttpBinding
from transcoder.errors import TranscodeError
from transcoder.query import apply_query_params, load_json, set_field_value
from transcoder.status import Code

__all__ = ["RequestOptions", "build_request", "encode_request"]

_BODY = "invalid JSON body"
# json_format counts message nesting; JSON nesting deeper than Python's own limit is caught in load_json.
_MAX_DEPTH = 100


@dataclass(frozen=True)
class RequestOptions:
    strict_query: bool = False  # unknown query params -> 400
    strict_body: bool = False  # unknown JSON fields in the body -> 400 (default: ignored, like DiscardUnknown)


_DEFAULT_OPTIONS = RequestOptions()
# Per binding, the field paths the query string may not touch: path variables and the body field.
_SKIP: WeakKeyDictionary[HttpBinding, frozenset[str]] = WeakKeyDictionary()


def _skip_for(binding: HttpBinding) -> frozenset[str]:
    skip = _SKIP.get(binding)
    if skip is None:
        paths = {".".join(variable.field_path) for variable in binding.template.variables}
        if binding.body:
            paths.add(binding.body)
        skip = _SKIP[binding] = frozenset(paths)
    return skip


def build_request(
    binding: HttpBinding,
    variables: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    options: RequestOptions = _DEFAULT_OPTIONS,
) -> Message:
    """The request message: the body first, then path variables over it, then query parameters (grpc-gateway's order).

    `variables` maps each path variable's dotted field path to its (already unescaped) value.
    """
    message = binding.method.input_class()
    rule = binding.body
    if rule and body:
        _merge_body(message, rule, body, options.strict_body)
    for field_path, value in variables.items():
        set_field_value(message, field_path, value)
    # With body "*" every field comes from the body, so grpc-gateway never reads the query string.
    if query and rule != "*":
        apply_query_params(message, query, skip=_skip_for(binding), strict=options.strict_query)
    return message


def encode_request(
    binding: HttpBinding,
    variables: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    options: RequestOptions = _DEFAULT_OPTIONS,
) -> bytes:
    """build_request(...) as protobuf wire bytes, ready for the gRPC call."""
    return build_request(binding, variables, query, body, options).SerializeToString()


def _merge_body(message: Message, rule: str, body: bytes, strict: bool) -> None:
    if body.isspace():
        return  # an empty body is an empty message part, as for b""
    value = load_json(body, _BODY)
    descriptor = message.DESCRIPTOR
    if rule == "*":
        if not isinstance(value, dict) and _wants_object(descriptor):
            raise TranscodeError(Code.INVALID_ARGUMENT, f"{_BODY}: expected a JSON object for {descriptor.full_name}")
        document = value
    else:
        field = descriptor.fields_by_name[rule]
        if _wants_object(field.message_type) and not field.is_repeated and not isinstance(value, dict | None):
            raise TranscodeError(
                Code.INVALID_ARGUMENT, f"{_BODY}: expected a JSON object for {field.message_type.full_name}"
            )
        # Wrapping the value under its field name lets json_format handle every field kind the same way.
        document = {rule: value}
    _check_document(document, descriptor, "", 0)
    try:
        _parse(document, message)
    except TranscodeError:
        if strict or not _drop_unknown(document, descriptor, 0):
            raise
        # Unknown fields are rare: pay for the pruning pass only when the strict parse has failed.
        message.Clear()
        _parse(document, message)


def _check_document(value: Any, descriptor: Descriptor, path: str, depth: int) -> None:
    """Refuse what json_format would take silently but protojson (and so grpc-gateway) refuses.

    - one field given twice, by its proto name and its JSON name (`book_count` and `bookCount`): json_format
      takes the last one;
    - a bytes value that is not base64: json_format drops the characters it does not know and decodes the rest.
    """
    if not isinstance(value, dict) or depth > _MAX_DEPTH or descriptor.full_name.startswith("google.protobuf."):
        return
    seen: dict[str, str] = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key) or _fields_by_json_name(descriptor).get(key)
        if field is None:
            continue
        child = f"{path}.{field.name}" if path else field.name
        if field.name in seen:
            raise TranscodeError(
                Code.INVALID_ARGUMENT, f"{_BODY}: field {child!r} is given twice (as {seen[field.name]!r} and {key!r})"
            )
        seen[field.name] = key
        sub = field.message_type
        if sub is None:
            if field.type == FieldDescriptor.TYPE_BYTES:
                for element in item if isinstance(item, list) else (item,):
                    _check_base64(element, child)
            continue
        if sub.GetOptions().map_entry:
            value_field = sub.fields_by_name["value"]
            if isinstance(item, dict):
                for entry in item.values():
                    _check_value(entry, value_field, child, depth)
        elif isinstance(item, list):
            for element in item:
                _check_value(element, field, child, depth)
        else:
            _check_value(item, field, child, depth)


def _check_value(value: Any, field: FieldDescriptor, path: str, depth: int) -> None:
    """One value of `field` (a map value or a repeated element included)."""
    sub = field.message_type
    if sub is None:
        if field.type == FieldDescriptor.TYPE_BYTES:
            _check_base64(value, path)
    elif sub.full_name == "google.protobuf.BytesValue":
        _check_base64(value, path)
    else:
        _check_document(value, sub, path, depth + 1)


# protojson's alphabets: standard or URL-safe (not both in one value), padding optional; Go's decoder skips CR/LF.
_STD_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")
_URL_BASE64 = re.compile(r"[A-Za-z0-9\-_]*={0,2}\Z")


def _check_base64(value: Any, path: str) -> None:
    if not isinstance(value, str):
        return  # json_format refuses a non-string itself
    text = value.replace("\r", "").replace("\n", "") if "\n" in value or "\r" in value else value
    alphabet = _URL_BASE64 if "-" in text or "_" in text else _STD_BASE64
    unpadded = len(text.rstrip("="))
    padding_ok = "=" not in text or len(text) % 4 == 0
    if alphabet.match(text) is None or unpadded % 4 == 1 or not padding_ok:
        raise TranscodeError(Code.INVALID_ARGUMENT, f'{_BODY}: field "{path}": not valid base64')


def _fields_by_json_name(descriptor: Descriptor) -> dict[str, Any]:
    cached = _JSON_NAMES.get(descriptor)
    if cached is None:
        cached = _JSON_NAMES[descriptor] = {f.json_name: f for f in descriptor.fields}
    return cached


_JSON_NAMES: dict[Descriptor, dict[str, Any]] = {}


# Well-known types whose JSON form is not an object.
_JSON_NOT_OBJECT = frozenset(
    {
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)


def _wants_object(descriptor: Descriptor | None) -> bool:
    # json_format reads a list where a message belongs as a message with no fields, or fails obscurely.
    return descriptor is not None and descriptor.full_name not in _JSON_NOT_OBJECT


def _parse(document: Any, message: Message) -> None:
    try:
        # ignore_unknown_fields would also swallow unknown enum names; unknown fields are dropped by hand instead.
        json_format.ParseDict(
            document, message, descriptor_pool=message.DESCRIPTOR.file.pool, max_recursion_depth=_MAX_DEPTH
        )
    except json_format.ParseError as exc:
        raise TranscodeError(Code.INVALID_ARGUMENT, _explain(str(exc))) from None
    except RecursionError:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{_BODY}: nested too deeply") from None
    except Exception as exc:  # ParseDict lets TypeError & co. escape on odd shapes; json_format.Parse wraps them too
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{_BODY}: {type(exc).__name__}: {exc}") from None


# json_format nests its messages ("Failed to parse a field: Failed to parse b field: why at Msg.a.b."); a dotted
# field path reads better and stays short when the document is deep.
_CHAIN_RE = re.compile(r"Failed to parse (\S+) field: ")
_TRAILING_PATH_RE = re.compile(r"\s+at \"?[\w.\[\]]*\"?\.*\Z")
_UNKNOWN_RE = re.compile(r'Message type "([^"]+)" has no field named "([^"]*)"')


def _explain(text: str) -> str:
    names: list[str] = []
    pos = 0
    while (link := _CHAIN_RE.match(text, pos)) is not None:
        names.append(link.group(1))
        pos = link.end()
    detail = text[pos:].split("\n", 1)[0]
    unknown = _UNKNOWN_RE.match(detail)
    if unknown is not None:
        detail = f'unknown field "{unknown.group(2)}" in {unknown.group(1)}'
    detail = _TRAILING_PATH_RE.sub("", detail).rstrip(".")
    if len(detail) > 200:
        detail = detail[:197] + "..."
    if len(names) > 8:
        names = [*names[:4], "...", *names[-3:]]
    return f'{_BODY}: field "{".".join(names)}": {detail}' if names else f"{_BODY}: {detail}"


_FREE_FORM = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def _drop_unknown(value: Any, descriptor: Descriptor, depth: int) -> bool:
    """Delete keys naming no field, in place, down the whole document; True if any went."""
    if depth > _MAX_DEPTH or not isinstance(value, dict) or descriptor.full_name in _FREE_FORM:
        return False
    if descriptor.full_name == "google.protobuf.Any":
        type_url = value.get("@type")
        if not isinstance(type_url, str):
            return False
        try:
            descriptor = descriptor.file.pool.FindMessageTypeByName(type_url.rpartition("/")[2])
        except KeyError:
            return False
        if descriptor.full_name in _JSON_NOT_OBJECT or descriptor.full_name in _FREE_FORM:
            return False
        known = {"@type"}
    else:
        known = set()
    dropped = False
    for key in list(value):
        if key in known:
            continue
        field = descriptor.fields_by_name.get(key) or _json_names(descriptor).get(key)
        if field is None:
            if not key.startswith("["):  # "[pkg.ext]" names an extension; let json_format judge it
                del value[key]
                dropped = True
            continue
        child = field.message_type
        if child is None:
            continue
        item = value[key]
        if child.GetOptions().map_entry:
            child = child.fields_by_name["value"].message_type
            if child is not None and isinstance(item, dict):
                for entry in item.values():
                    dropped |= _drop_unknown(entry, child, depth + 1)
        elif field.is_repeated:
            if isinstance(item, list):
                for entry in item:
                    dropped |= _drop_unknown(entry, child, depth + 1)
        else:
            dropped |= _drop_unknown(item, child, depth + 1)
    return dropped


_JSON_NAMES: dict[Descriptor, dict[str, Any]] = {}


def _json_names(descriptor: Descriptor) -> dict[str, Any]:
    names = _JSON_NAMES.get(descriptor)
    if names is None:
        names = _JSON_NAMES[descriptor] = {f.json_name: f for f in descriptor.fields}
    return names
