"""Query parameters and path values -> message fields, by grpc-gateway's PopulateQueryParameters rules."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from transcoder.errors import TranscodeError
from transcoder.status import Code

__all__ = ["apply_query_params", "load_json", "set_field_value"]


class _BadValue(Exception):
    """A text value that does not fit its field; the message says why, the caller says where."""


# -- JSON text, shared with request.py -------------------------------------------------------------------------


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # cheaper than a Python-level loop in the common case
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity literals; JSON (and protojson) do not.
    raise ValueError(f'{name} is not valid JSON (use the string "{name}")')


_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


def load_json(data: bytes | str, what: str) -> Any:
    """Strict JSON text -> Python value; every refusal is TranscodeError(INVALID_ARGUMENT) prefixed with `what`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TranscodeError(
                Code.INVALID_ARGUMENT, f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    try:
        value = json.loads(data, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant)
        # A "\ud800" escape decodes to a lone surrogate, which protobuf (and upb's name lookups) cannot take;
        # only text with such an escape can hold one, so only that text pays for the check.
        if "\\u" in data and _SURROGATE_ESCAPE_RE.search(data) is not None:
            json.dumps(value, ensure_ascii=False).encode()
        return value
    except UnicodeEncodeError:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{what}: a string holds an unpaired surrogate") from None
    except json.JSONDecodeError as exc:
        raise TranscodeError(
            Code.INVALID_ARGUMENT, f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _DuplicateKey as exc:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{what}: duplicate key {json.dumps(str(exc))}") from None
    except RecursionError:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{what}: nested too deeply") from None
    except ValueError as exc:  # NaN literals, integers with more digits than int() allows
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{what}: {exc}") from None


def _parse_json_into(message: Message, text: str) -> None:
    try:
        json_format.ParseDict(load_json(text, "invalid JSON"), message)
    except TranscodeError as exc:
        raise _BadValue(exc.message) from None
    except Exception as exc:  # json_format.Parse wraps everything ParseDict raises; so do we
        raise _BadValue(f"invalid {message.DESCRIPTOR.name}: {exc}") from None


# -- scalars ----------------------------------------------------------------------------------------------------


# Built once: json.dumps(..., ensure_ascii=False) builds an encoder per call, and _show runs on every request.
_QUOTE = json.JSONEncoder(ensure_ascii=False).encode


def _show(text: str) -> str:
    # Quote the offending value, but never echo a megabyte back to the client.
    return _QUOTE(text if len(text) <= 64 else text[:61] + "...")


_SIGNED_RE = re.compile(r"[+-]?[0-9]+\Z")
_UNSIGNED_RE = re.compile(r"[0-9]+\Z")
# Go's strconv.ParseFloat syntax, less hex floats; Python's float() alone would also take "1_0" and " 1".
_FLOAT_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\Z", re.IGNORECASE)
# strconv.ParseBool
_BOOLS = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}  # fmt: skip


def _int_converter(type_name: str, bits: int, signed: bool) -> Callable[[str], int]:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    pattern = _SIGNED_RE if signed else _UNSIGNED_RE

    def convert(text: str) -> int:
        if pattern.match(text) is None:
            raise _BadValue(f"{_show(text)} is not a valid {type_name}")
        # Leading zeros are fine (as in Go); more than 20 significant digits is out of range for any width.
        if len(text.lstrip("+-0")) > 20 or not low <= (value := int(text)) <= high:
            raise _BadValue(f"{_show(text)} is out of range for {type_name}")
        return value

    return convert


def _float_converter(single: bool) -> Callable[[str], float]:
    type_name = "float" if single else "double"

    def convert(text: str) -> float:
        if _FLOAT_RE.match(text) is None:
            raise _BadValue(f"{_show(text)} is not a valid {type_name}")
        value = float(text)
        if math.isinf(value) and "n" not in text.lower():  # an overflowed literal, not "Infinity"
            raise _BadValue(f"{_show(text)} is out of range for {type_name}")
        if single and not math.isinf(value):
            try:
                struct.pack("<f", value)
            except OverflowError:
                raise _BadValue(f"{_show(text)} is out of range for float") from None
        return value

    return convert


def _convert_bool(text: str) -> bool:
    try:
        return _BOOLS[text]
    except KeyError:
        raise _BadValue(f"{_show(text)} is not a valid bool") from None


def _convert_string(text: str) -> str:
    return text


def _convert_bytes(text: str) -> bytes:
    # grpc-gateway's runtime.Bytes tries standard then URL-safe base64; padding is optional here.
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _BadValue(f"{_show(text)} is not valid base64") from None


def _enum_converter(field: FieldDescriptor) -> Callable[[str], int]:
    enum = field.enum_type
    by_name = {value.name: value.number for value in enum.values}
    numbers = {value.number for value in enum.values}
    as_int32 = _int_converter("int32", 32, True)

    def convert(text: str) -> int:
        number = by_name.get(text)
        if number is not None:
            return number
        # grpc-gateway accepts a number only if the enum defines it, even for open enums.
        try:
            number = as_int32(text)
        except _BadValue:
            number = None
        if number is None or number not in numbers:
            raise _BadValue(f"{_show(text)} is not a valid {enum.full_name}")
        return number

    return convert


_T = FieldDescriptor
_SCALARS: dict[int, Callable[[str], Any]] = {
    _T.TYPE_INT32: _int_converter("int32", 32, True),
    _T.TYPE_SINT32: _int_converter("int32", 32, True),
    _T.TYPE_SFIXED32: _int_converter("int32", 32, True),
    _T.TYPE_INT64: _int_converter("int64", 64, True),
    _T.TYPE_SINT64: _int_converter("int64", 64, True),
    _T.TYPE_SFIXED64: _int_converter("int64", 64, True),
    _T.TYPE_UINT32: _int_converter("uint32", 32, False),
    _T.TYPE_FIXED32: _int_converter("uint32", 32, False),
    _T.TYPE_UINT64: _int_converter("uint64", 64, False),
    _T.TYPE_FIXED64: _int_converter("uint64", 64, False),
    _T.TYPE_FLOAT: _float_converter(True),
    _T.TYPE_DOUBLE: _float_converter(False),
    _T.TYPE_BOOL: _convert_bool,
    _T.TYPE_STRING: _convert_string,
    _T.TYPE_BYTES: _convert_bytes,
}


def _scalar_converter(field: FieldDescriptor) -> Callable[[str], Any] | None:
    if field.type == _T.TYPE_ENUM:
        return _enum_converter(field)
    return _SCALARS.get(field.type)


# -- well-known types that a single text value can fill ---------------------------------------------------------

_TIMESTAMP_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
                           r"(Z|[+-][0-9]{2}:[0-9]{2})\Z")  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP_MIN, _TIMESTAMP_MAX = -62135596800, 253402300799  # 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z


def _fill_timestamp(message: Any, text: str) -> None:
    match = _TIMESTAMP_RE.match(text)
    if match is None:
        raise _BadValue(f"{_show(text)} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError as exc:
        raise _BadValue(f"{_show(text)} is not an RFC 3339 timestamp: {exc}") from None
    seconds = (moment - _EPOCH).days * 86400 + (moment - _EPOCH).seconds
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX:
        raise _BadValue(f"{_show(text)} is out of range for google.protobuf.Timestamp")
    message.seconds = seconds
    message.nanos = int(fraction.ljust(9, "0")) if fraction else 0


_PROTOJSON_DURATION_RE = re.compile(r"(-)?([0-9]+)(?:\.([0-9]{1,9}))?s\Z")
_GO_DURATION_PART_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_NANOS_PER_UNIT = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_NANOS_PER_UNIT["h"] = 3600 * 10**9
_DURATION_MAX_SECONDS = 315_576_000_000  # protojson's range: +-10000 years
_GO_DURATION_MAX_NANOS = (1 << 63) - 1


def _go_duration_nanos(text: str) -> int | None:
    """Go's time.ParseDuration ("1h2m3.5s", "-300ms"), in nanoseconds; None if the syntax is wrong."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    if not body:
        return None
    total, pos = 0, 0
    while pos < len(body):
        part = _GO_DURATION_PART_RE.match(body, pos)
        if part is None or not (part.group(1) or part.group(2)):
            return None
        whole, fraction, unit = part.groups()
        scale = _NANOS_PER_UNIT[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
        pos = part.end()
    return -total if text[0] == "-" else total


def _fill_duration(message: Any, text: str) -> None:
    protojson = _PROTOJSON_DURATION_RE.match(text)
    if protojson is not None:
        negative, whole, fraction = protojson.groups()
        seconds, nanos = int(whole), int((fraction or "0").ljust(9, "0"))
        if seconds > _DURATION_MAX_SECONDS:
            raise _BadValue(f"{_show(text)} is out of range for google.protobuf.Duration")
        message.seconds, message.nanos = (-seconds, -nanos) if negative else (seconds, nanos)
        return
    total = _go_duration_nanos(text)
    if total is None:
        raise _BadValue(f'{_show(text)} is not a duration (use "1.5s" or Go\'s form, e.g. "1h2m3.5s", "300ms")')
    if abs(total) > _GO_DURATION_MAX_NANOS:
        raise _BadValue(f"{_show(text)} is out of range for a duration")
    magnitude = abs(total)
    sign = -1 if total < 0 else 1
    message.seconds, message.nanos = sign * (magnitude // 10**9), sign * (magnitude % 10**9)


_UPPER_RE = re.compile(r"[A-Z]")


def _fill_field_mask(message: Any, text: str) -> None:
    # protojson spells paths in lowerCamel; grpc-gateway passes them through, so snake_case keeps working too.
    paths = [_UPPER_RE.sub(lambda m: "_" + m.group().lower(), path) for path in text.split(",") if path]
    del message.paths[:]
    message.paths.extend(paths)


def _wrapper_filler(convert: Callable[[str], Any]) -> Callable[[Any, str], None]:
    def fill(message: Any, text: str) -> None:
        message.value = convert(text)

    return fill


_FILLERS: dict[str, Callable[[Any, str], None]] = {
    "google.protobuf.Timestamp": _fill_timestamp,
    "google.protobuf.Duration": _fill_duration,
    "google.protobuf.FieldMask": _fill_field_mask,
    "google.protobuf.Struct": _parse_json_into,
    "google.protobuf.Value": _parse_json_into,
    "google.protobuf.ListValue": _parse_json_into,
    "google.protobuf.DoubleValue": _wrapper_filler(_SCALARS[_T.TYPE_DOUBLE]),
    "google.protobuf.FloatValue": _wrapper_filler(_SCALARS[_T.TYPE_FLOAT]),
    "google.protobuf.Int64Value": _wrapper_filler(_SCALARS[_T.TYPE_INT64]),
    "google.protobuf.UInt64Value": _wrapper_filler(_SCALARS[_T.TYPE_UINT64]),
    "google.protobuf.Int32Value": _wrapper_filler(_SCALARS[_T.TYPE_INT32]),
    "google.protobuf.UInt32Value": _wrapper_filler(_SCALARS[_T.TYPE_UINT32]),
    "google.protobuf.BoolValue": _wrapper_filler(_SCALARS[_T.TYPE_BOOL]),
    "google.protobuf.StringValue": _wrapper_filler(_SCALARS[_T.TYPE_STRING]),
    "google.protobuf.BytesValue": _wrapper_filler(_SCALARS[_T.TYPE_BYTES]),
}


# -- field paths, resolved once per (message type, key) --------------------------------------------------------

# Sets one text value on the leaf's parent message: (parent, text, map key or None).
_Setter = Callable[[Any, str, "str | None"], None]


@dataclass(frozen=True, slots=True, eq=False)
class _Target:
    fields: tuple[FieldDescriptor, ...]  # resolved fields, outermost first (partial when unknown)
    prefixes: tuple[str, ...]  # dotted proto-name path of each resolved prefix, checked against `skip`
    unknown: bool = False  # some name on the path is not a field
    problem: str | None = None  # the path names fields, but no text value can be put there
    setter: _Setter | None = None
    repeated: bool = False  # values append rather than replace
    is_map: bool = False
    oneofs: tuple[tuple[int, str, str], ...] = ()  # (depth, oneof name, field name) of real-oneof members


_CACHE: dict[tuple[Descriptor, str], _Target] = {}
# Keys come from clients, so the cache is bounded: a flood of made-up keys empties it rather than growing it.
_CACHE_LIMIT = 8192
_FIELD_INFO: dict[Descriptor, tuple[dict[str, FieldDescriptor], frozenset[str]]] = {}


def _field_info(descriptor: Descriptor) -> tuple[dict[str, FieldDescriptor], frozenset[str]]:
    """Fields by proto name and json name, and the names of the oneofs protoc made up for `optional`."""
    info = _FIELD_INFO.get(descriptor)
    if info is None:
        by_name = {f.json_name: f for f in descriptor.fields}
        by_name.update(descriptor.fields_by_name)  # a proto name wins over another field's json name
        proto = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(proto)
        synthetic = frozenset(proto.oneof_decl[f.oneof_index].name for f in proto.field if f.proto3_optional)
        info = _FIELD_INFO[descriptor] = (by_name, synthetic)
    return info


def _resolve(descriptor: Descriptor, key: str) -> _Target:
    cache_key = (descriptor, key)
    target = _CACHE.get(cache_key)
    if target is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        target = _CACHE[cache_key] = _build_target(descriptor, key)
    return target


def _build_target(descriptor: Descriptor, key: str) -> _Target:
    fields: list[FieldDescriptor] = []
    prefixes: list[str] = []
    oneofs: list[tuple[int, str, str]] = []
    names = key.split(".")
    current: Descriptor = descriptor
    for depth, name in enumerate(names):
        by_name, synthetic = _field_info(current)
        field = by_name.get(name)
        if field is None:
            return _Target(tuple(fields), tuple(prefixes), unknown=True)
        fields.append(field)
        prefixes.append(f"{prefixes[-1]}.{field.name}" if prefixes else field.name)
        if field.containing_oneof is not None and field.containing_oneof.name not in synthetic:
            oneofs.append((depth, field.containing_oneof.name, field.name))
        if depth == len(names) - 1:
            break
        if field.message_type is None or field.is_repeated or field.message_type.full_name in _FILLERS:
            kind = "repeated" if field.is_repeated else "not a message"
            problem = f'"{prefixes[-1]}" is {kind}: a parameter cannot name a field inside it'
            return _Target(tuple(fields), tuple(prefixes), problem=problem)
        current = field.message_type
    leaf = fields[-1]
    common = {"fields": tuple(fields), "prefixes": tuple(prefixes), "oneofs": tuple(oneofs)}
    try:
        setter, is_map = _setter_for(leaf)
    except _BadValue as exc:
        return _Target(**common, problem=str(exc))
    return _Target(**common, setter=setter, repeated=leaf.is_repeated and not is_map, is_map=is_map)


def _value_writer(field: FieldDescriptor) -> tuple[Callable[[str], Any] | None, Callable[[Any, str], None] | None]:
    """(converter for a scalar/enum field, filler for a well-known message field)."""
    if field.message_type is None:
        return _scalar_converter(field), None
    filler = _FILLERS.get(field.message_type.full_name)
    if filler is None:
        raise _BadValue(
            f'"{field.name}" is a {field.message_type.full_name} message: name one of its fields, as "{field.name}.x"'
        )
    return None, filler


def _setter_for(field: FieldDescriptor) -> tuple[_Setter, bool]:
    name = field.name
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        convert_key, _ = _value_writer(entry.fields_by_name["key"])
        convert_value, fill_value = _value_writer(entry.fields_by_name["value"])
        assert convert_key is not None  # map keys are always scalars

        def set_map(parent: Any, text: str, map_key: str | None) -> None:
            assert map_key is not None
            key = convert_key(map_key)
            if fill_value is not None:
                value = getattr(parent, name)[key]
                value.Clear()
                fill_value(value, text)
            else:
                assert convert_value is not None
                getattr(parent, name)[key] = convert_value(text)

        return set_map, True
    convert, fill = _value_writer(field)
    if field.is_repeated:
        if fill is not None:

            def add_message(parent: Any, text: str, map_key: str | None) -> None:
                fill(getattr(parent, name).add(), text)

            return add_message, False
        assert convert is not None

        def append(parent: Any, text: str, map_key: str | None) -> None:
            getattr(parent, name).append(convert(text))

        return append, False
    if fill is not None:

        def set_message(parent: Any, text: str, map_key: str | None) -> None:
            value = getattr(parent, name)
            value.Clear()
            fill(value, text)
            value.SetInParent()  # an empty FieldMask or Struct is still "set"

        return set_message, False
    assert convert is not None

    def set_scalar(parent: Any, text: str, map_key: str | None) -> None:
        setattr(parent, name, convert(text))

    return set_scalar, False


def _apply(message: Message, target: _Target, text: str, map_key: str | None, where: str) -> None:
    parent: Any = message
    if target.oneofs:
        # A member of a oneof may be set once; another member of the same oneof being set already is an error.
        holders: list[Any] = []
        for field in target.fields[:-1]:
            holders.append(parent)
            parent = getattr(parent, field.name)
        holders.append(parent)
        for depth, oneof, field_name in target.oneofs:
            chosen = holders[depth].WhichOneof(oneof)
            if chosen is not None and chosen != field_name:
                raise TranscodeError(
                    Code.INVALID_ARGUMENT, f'{where}: field "{chosen}" of oneof "{oneof}" is already set'
                )
    else:
        for field in target.fields[:-1]:
            parent = getattr(parent, field.name)
    assert target.setter is not None
    try:
        target.setter(parent, text, map_key)
    except _BadValue as exc:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid value for {where}: {exc}") from None
    except (ValueError, TypeError) as exc:  # protobuf refuses the value itself (e.g. a lone surrogate in a string)
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid value for {where}: {exc}") from None


def _split_map_key(key: str) -> tuple[str, str | None]:
    # `map_field[key]=value`; the first "[" splits, since field names never contain one but map keys may.
    if key.endswith("]"):
        open_at = key.find("[")
        if open_at > 0:
            return key[:open_at], key[open_at + 1 : -1]
    return key, None


def apply_query_params(
    message: Message,
    params: Sequence[tuple[str, str]],
    *,
    skip: Collection[str] = (),
    strict: bool = False,
) -> None:
    """Set the fields that query parameters name, as grpc-gateway's PopulateQueryParameters does.

    `skip` holds dotted proto-name field paths already bound by the path or the body: a parameter naming one of
    them, or a field below one, is ignored. Unknown names are ignored unless `strict`.
    """
    if not params:
        return
    descriptor = message.DESCRIPTOR
    skipped = skip if isinstance(skip, (set, frozenset)) else frozenset(skip)
    # Marks are per field, not per spelling: "page_size" and "pageSize" name one field.
    seen: set[tuple[tuple[FieldDescriptor, ...], str | None]] | None = None
    for key, text in params:
        field_key, map_key = _split_map_key(key)
        target = _resolve(descriptor, field_key)
        if skipped and not skipped.isdisjoint(target.prefixes):
            continue
        where = f"query parameter {_show(key)}"
        if target.unknown:
            if strict:
                raise TranscodeError(Code.INVALID_ARGUMENT, f"unknown query parameter {_show(key)}")
            continue
        if target.problem is not None:
            raise TranscodeError(Code.INVALID_ARGUMENT, f"{where}: {target.problem}")
        if target.is_map != (map_key is not None):
            if target.is_map:
                problem = f'"{field_key}" is a map: give each entry as {field_key}[key]=value'
            else:
                problem = f'"{field_key}" is not a map field'
            raise TranscodeError(Code.INVALID_ARGUMENT, f"{where}: {problem}")
        if not target.repeated:
            # grpc-gateway refuses several values for a singular field (and for one map key) rather than guess.
            mark = (target.fields, map_key)
            if seen is None:
                seen = set()
            elif mark in seen:
                raise TranscodeError(Code.INVALID_ARGUMENT, f"{where}: given more than once")
            seen.add(mark)
        _apply(message, target, text, map_key, where)


def set_field_value(message: Message, field_path: str, text: str) -> None:
    """Set the (possibly nested, dotted) field a path variable is bound to, parsed as a query value would be.

    A repeated field takes a comma-separated list ("1,2,3"), as grpc-gateway's default path separator does.
    """
    target = _resolve(message.DESCRIPTOR, field_path)
    where = f"field {_show(field_path)}"
    if target.unknown:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{where}: no such field in {message.DESCRIPTOR.full_name}")
    if target.problem is not None or target.is_map:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"{where}: {target.problem or 'a path cannot fill a map'}")
    if target.repeated:
        parent: Any = message
        for field in target.fields[:-1]:
            parent = getattr(parent, field.name)
        del getattr(parent, target.fields[-1].name)[:]  # the path replaces what the body gave, as for a scalar
        for item in text.split(","):
            _apply(message, target, item, None, where)
        return
    _apply(message, target, text, None, where)
