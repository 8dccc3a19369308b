"""gRPC response bytes -> JSON bytes, as grpc-gateway v2's default marshaler (protojson) writes them."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import descriptor_pool as descriptor_pool_module
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from transcoder.descriptors import MethodInfo
from transcoder.errors import TranscodeError
from transcoder.status import Code

__all__ = [
    "HTTP_BODY",
    "JsonOptions",
    "fill_http_body",
    "http_body_field",
    "render_http_body",
    "render_message",
    "render_response",
    "render_status_details",
    "returns_http_body",
]

HTTP_BODY = "google.api.HttpBody"


@dataclass(frozen=True)
class JsonOptions:
    use_proto_names: bool = False  # grpc-gateway v2 default: lowerCamel json names
    emit_unpopulated: bool = True  # grpc-gateway v2's default marshaler emits unpopulated fields
    enums_as_ints: bool = False
    indent: int | None = None


_DEFAULT_OPTIONS = JsonOptions()


class _RenderError(Exception):
    """A value protojson refuses to write (NaN in a Value, a Timestamp out of range, an unresolvable Any)."""


class _Context:
    __slots__ = ("flags", "pool")

    def __init__(self, options: JsonOptions, pool: DescriptorPool) -> None:
        self.flags = (options.use_proto_names, options.emit_unpopulated, options.enums_as_ints)
        self.pool = pool


# -- scalars -----------------------------------------------------------------------------------------------------

_F32 = struct.Struct("<f")
_EXACT = float(1 << 53)


def _number(value: float) -> Any:
    # protojson (like JavaScript) writes 1.0 as 1; only where the integer is exactly the double.
    if value.is_integer() and -_EXACT < value < _EXACT and value != 0:
        return int(value)
    return 0 if value == 0 and math.copysign(1.0, value) > 0 else value


def _render_double(value: float, ctx: _Context) -> Any:
    if math.isfinite(value):
        return _number(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _render_float(value: float, ctx: _Context) -> Any:
    if not math.isfinite(value):
        return _render_double(value, ctx)
    # The shortest decimal that reads back as the same float32, as Go's strconv.FormatFloat(v, 'g', -1, 32).
    for digits in (6, 7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == value:
            return _number(candidate)
    return _number(value)


def _render_int64(value: int, ctx: _Context) -> str:
    return str(value)


def _render_bytes(value: bytes, ctx: _Context) -> str:
    return base64.b64encode(value).decode("ascii")


def _enum_renderer(field: FieldDescriptor, as_ints: bool) -> Callable[[int, _Context], Any] | None:
    if field.enum_type.full_name == "google.protobuf.NullValue":
        return lambda value, ctx: None
    if as_ints:
        return None
    names = {v.number: v.name for v in reversed(field.enum_type.values)}  # first name wins for aliases

    def render(value: int, ctx: _Context) -> Any:
        return names.get(value, value)  # an open enum may carry a number it does not name

    return render


_T = FieldDescriptor
_SCALAR_RENDERERS: dict[int, Callable[[Any, _Context], Any]] = {
    _T.TYPE_INT64: _render_int64,
    _T.TYPE_SINT64: _render_int64,
    _T.TYPE_SFIXED64: _render_int64,
    _T.TYPE_UINT64: _render_int64,
    _T.TYPE_FIXED64: _render_int64,
    _T.TYPE_DOUBLE: _render_double,
    _T.TYPE_FLOAT: _render_float,
    _T.TYPE_BYTES: _render_bytes,
}


def _element_renderer(field: FieldDescriptor, as_ints: bool) -> Callable[[Any, _Context], Any] | None:
    """How one value of `field` becomes JSON; None when the Python value already is its JSON value."""
    if field.message_type is not None:
        # Which renderer a message field needs is known from its type: picked once, here, not per value.
        return _SPECIAL.get(field.message_type.full_name, _render_fields)
    if field.type == _T.TYPE_ENUM:
        return _enum_renderer(field, as_ints)
    return _SCALAR_RENDERERS.get(field.type)


def _map_key(key: Any) -> str:
    if key is True:
        return "true"
    if key is False:
        return "false"
    return key if isinstance(key, str) else str(key)


# -- messages ----------------------------------------------------------------------------------------------------

_SINGULAR, _REPEATED, _MAP = 0, 1, 2
_SKIP, _LIST, _DICT = object(), object(), object()  # what an unpopulated field becomes, besides a plain value
_MISSING = object()

# (field, JSON key, mode, element renderer, value when unpopulated)
_Entry = tuple[FieldDescriptor, str, int, "Callable[[Any, _Context], Any] | None", Any]
_PLANS: dict[tuple[Descriptor, tuple[bool, bool, bool]], tuple[_Entry, ...]] = {}


def _plan(descriptor: Descriptor, flags: tuple[bool, bool, bool]) -> tuple[_Entry, ...]:
    plan = _PLANS.get((descriptor, flags))
    if plan is None:
        plan = _PLANS[(descriptor, flags)] = tuple(_entry(field, flags) for field in descriptor.fields)
    return plan


def _entry(field: FieldDescriptor, flags: tuple[bool, bool, bool]) -> _Entry:
    use_proto_names, emit_unpopulated, as_ints = flags
    key = field.name if use_proto_names else field.json_name
    entry_type = field.message_type
    if entry_type is not None and entry_type.GetOptions().map_entry:
        value_field = entry_type.fields_by_name["value"]
        return field, key, _MAP, _element_renderer(value_field, as_ints), _DICT if emit_unpopulated else _SKIP
    render = _element_renderer(field, as_ints)
    if field.is_repeated:
        return field, key, _REPEATED, render, _LIST if emit_unpopulated else _SKIP
    if not emit_unpopulated or field.containing_oneof is not None:
        # protojson never emits an unset oneof member; proto3 `optional` lives in a (synthetic) oneof too.
        return field, key, _SINGULAR, render, _SKIP
    if field.has_presence:
        return field, key, _SINGULAR, render, None  # an unset message (or proto2 scalar) is null
    default = field.default_value
    return field, key, _SINGULAR, render, default if render is None else render(default, _NO_CONTEXT)


def _render(message: Message, ctx: _Context) -> Any:
    special = _SPECIAL.get(message.DESCRIPTOR.full_name)
    if special is not None:
        return special(message, ctx)
    return _render_fields(message, ctx)


def _render_fields(message: Message, ctx: _Context) -> dict[str, Any]:
    """A message that is not a well-known type with a JSON form of its own: an object of its fields."""
    populated = dict(message.ListFields())
    js: dict[str, Any] = {}
    for field, key, mode, render, unpopulated in _plan(message.DESCRIPTOR, ctx.flags):
        value = populated.get(field, _MISSING)
        if value is _MISSING:
            if unpopulated is _SKIP:
                continue
            js[key] = [] if unpopulated is _LIST else {} if unpopulated is _DICT else unpopulated
        elif mode == _SINGULAR:
            js[key] = value if render is None else render(value, ctx)
        elif mode == _REPEATED:
            js[key] = list(value) if render is None else [render(item, ctx) for item in value]
        else:
            # protojson sorts map entries by key, so the output is stable.
            items = sorted(value.items())
            if render is None:
                js[key] = {_map_key(k): v for k, v in items}
            else:
                js[key] = {_map_key(k): render(v, ctx) for k, v in items}
    return js


# -- well-known types --------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP_MIN, _TIMESTAMP_MAX = -62135596800, 253402300799
_DURATION_MAX_SECONDS = 315_576_000_000


def _fraction(nanos: int) -> str:
    # 0, 3, 6 or 9 digits, as protojson writes them.
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}"
    return f".{nanos:09d}"


def _render_timestamp(message: Any, ctx: _Context) -> str:
    seconds, nanos = message.seconds, message.nanos
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX or not 0 <= nanos < 1_000_000_000:
        raise _RenderError(f"google.protobuf.Timestamp out of range: seconds={seconds} nanos={nanos}")
    t = _EPOCH + timedelta(seconds=seconds)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}{_fraction(nanos)}Z"


def _render_duration(message: Any, ctx: _Context) -> str:
    seconds, nanos = message.seconds, message.nanos
    if abs(seconds) > _DURATION_MAX_SECONDS or abs(nanos) >= 1_000_000_000 or seconds * nanos < 0:
        raise _RenderError(f"google.protobuf.Duration out of range: seconds={seconds} nanos={nanos}")
    sign = "-" if seconds < 0 or nanos < 0 else ""
    return f"{sign}{abs(seconds)}{_fraction(abs(nanos))}s"


_SNAKE_PART = re.compile(r"_([a-z0-9])")
_CAMEL_SAFE = re.compile(r"[a-z0-9_.]*\Z")


def _render_field_mask(message: Any, ctx: _Context) -> str:
    paths = []
    for path in message.paths:
        camel = _SNAKE_PART.sub(lambda m: m.group(1).upper(), path)
        # protojson refuses paths that would not read back as themselves (upper case, "__", a trailing "_").
        if _CAMEL_SAFE.match(path) is None or "_" in camel:
            raise _RenderError(f"google.protobuf.FieldMask path {path!r} has no lowerCamel JSON form")
        paths.append(camel)
    return ",".join(paths)


def _render_value(message: Any, ctx: _Context) -> Any:
    kind = message.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        number = message.number_value
        if not math.isfinite(number):
            raise _RenderError(f"google.protobuf.Value cannot hold {number} in JSON")
        return _number(number)
    if kind == "struct_value":
        return _render_struct(message.struct_value, ctx)
    if kind == "list_value":
        return _render_list_value(message.list_value, ctx)
    return getattr(message, kind)  # string_value, bool_value


def _render_struct(message: Any, ctx: _Context) -> dict[str, Any]:
    return {key: _render_value(value, ctx) for key, value in sorted(message.fields.items())}


def _render_list_value(message: Any, ctx: _Context) -> list[Any]:
    return [_render_value(value, ctx) for value in message.values]


def _wrapper_renderer(render: Callable[[Any, _Context], Any] | None) -> Callable[[Any, _Context], Any]:
    if render is None:
        return lambda message, ctx: message.value
    return lambda message, ctx: render(message.value, ctx)


def _render_any(message: Any, ctx: _Context) -> dict[str, Any]:
    type_url, value = message.type_url, message.value
    if not type_url and not value:
        return {}
    inner = _unpack(type_url, value, ctx.pool)
    rendered = _render(inner, ctx)
    if inner.DESCRIPTOR.full_name in _SPECIAL:
        return {"@type": type_url, "value": rendered}
    return {"@type": type_url, **rendered}


def _unpack(type_url: str, value: bytes, pool: DescriptorPool) -> Message:
    try:
        descriptor = pool.FindMessageTypeByName(type_url.rpartition("/")[2])
    except KeyError:
        raise _RenderError(f"google.protobuf.Any of unknown type {type_url!r}") from None
    try:
        return message_factory.GetMessageClass(descriptor).FromString(value)
    except (DecodeError, RuntimeWarning) as exc:
        raise _RenderError(f"google.protobuf.Any of type {type_url!r} does not decode: {exc}") from None


_SPECIAL: dict[str, Callable[[Any, _Context], Any]] = {
    "google.protobuf.Timestamp": _render_timestamp,
    "google.protobuf.Duration": _render_duration,
    "google.protobuf.FieldMask": _render_field_mask,
    "google.protobuf.Struct": _render_struct,
    "google.protobuf.Value": _render_value,
    "google.protobuf.ListValue": _render_list_value,
    "google.protobuf.Any": _render_any,
    "google.protobuf.DoubleValue": _wrapper_renderer(_render_double),
    "google.protobuf.FloatValue": _wrapper_renderer(_render_float),
    "google.protobuf.Int64Value": _wrapper_renderer(_render_int64),
    "google.protobuf.UInt64Value": _wrapper_renderer(_render_int64),
    "google.protobuf.Int32Value": _wrapper_renderer(None),
    "google.protobuf.UInt32Value": _wrapper_renderer(None),
    "google.protobuf.BoolValue": _wrapper_renderer(None),
    "google.protobuf.StringValue": _wrapper_renderer(None),
    "google.protobuf.BytesValue": _wrapper_renderer(_render_bytes),
}

_NO_CONTEXT = _Context(_DEFAULT_OPTIONS, descriptor_pool_module.Default())


# -- entry points ------------------------------------------------------------------------------------------------


# json.dumps() with any option builds a new encoder per call; the compact one is built once.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _dump(value: Any, options: JsonOptions, what: str) -> bytes:
    try:
        if options.indent is None:
            return _COMPACT.encode(value).encode()
        return json.dumps(value, indent=options.indent, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError) as exc:  # a lone surrogate in a proto2 string, say
        raise TranscodeError(Code.INTERNAL, f"cannot write {what} as JSON: {exc}") from None


def _render_checked(message: Message, ctx: _Context) -> Any:
    try:
        return _render(message, ctx)
    except _RenderError as exc:
        raise TranscodeError(Code.INTERNAL, f"cannot render {message.DESCRIPTOR.full_name} as JSON: {exc}") from None


def render_message(message: Message, options: JsonOptions = _DEFAULT_OPTIONS) -> bytes:
    """A message as protojson bytes; Any is resolved in the pool the message's own type comes from."""
    ctx = _Context(options, message.DESCRIPTOR.file.pool)
    return _dump(_render_checked(message, ctx), options, message.DESCRIPTOR.full_name)


def render_response(
    method: MethodInfo, data: bytes, response_body: str = "", options: JsonOptions = _DEFAULT_OPTIONS
) -> bytes:
    """The upstream's protobuf answer as JSON; with `response_body`, only that top-level field's value.

    Bytes that do not decode as the output message are TranscodeError(INTERNAL), as a gRPC client would report.
    """
    try:
        message = method.output_class.FromString(data)
    except (DecodeError, RuntimeWarning) as exc:
        name = method.output_descriptor.full_name
        raise TranscodeError(Code.INTERNAL, f"upstream response is not a valid {name}: {exc}") from None
    if not response_body:
        return render_message(message, options)
    ctx = _Context(options, message.DESCRIPTOR.file.pool)
    field = message.DESCRIPTOR.fields_by_name.get(response_body)
    if field is None:
        raise TranscodeError(Code.INTERNAL, f"response_body {response_body!r} names no field of {method.full_name}")
    try:
        value = _render_field(message, field, ctx)
    except _RenderError as exc:
        raise TranscodeError(Code.INTERNAL, f"cannot render {field.full_name} as JSON: {exc}") from None
    return _dump(value, options, field.full_name)


def _render_field(message: Message, field: FieldDescriptor, ctx: _Context) -> Any:
    _, _, mode, render, _ = next(entry for entry in _plan(message.DESCRIPTOR, ctx.flags) if entry[0] is field)
    value = getattr(message, field.name)
    if mode == _REPEATED:
        return list(value) if render is None else [render(item, ctx) for item in value]
    if mode == _MAP:
        items = sorted(value.items())
        return {_map_key(k): (v if render is None else render(v, ctx)) for k, v in items}
    if field.message_type is not None and not message.HasField(field.name):
        return {}  # grpc-gateway marshals the nil message, which protojson writes as {}
    return value if render is None else render(value, ctx)


def render_status_details(
    details_bin: bytes, pool: DescriptorPool | None, options: JsonOptions = _DEFAULT_OPTIONS
) -> tuple[int, str, list[dict[str, Any]]]:
    """A serialized google.rpc.Status (grpc-status-details-bin, base64-decoded) -> (code, message, details).

    Each detail is an Any rendered as JSON with "@type"; one whose type `pool` does not know (or whose bytes do
    not decode) is kept as {"@type": url, "value": base64} rather than failing the whole error. Bytes that are
    not a Status at all raise TranscodeError(INTERNAL): the caller then falls back to grpc-status and
    grpc-message. `pool` None means the default pool, where google.rpc's own types are registered.
    """
    status = status_pb2.Status()
    try:
        status.ParseFromString(details_bin)
    except (DecodeError, RuntimeWarning) as exc:
        raise TranscodeError(Code.INTERNAL, f"grpc-status-details-bin is not a google.rpc.Status: {exc}") from None
    ctx = _Context(options, pool if pool is not None else descriptor_pool_module.Default())
    details: list[dict[str, Any]] = []
    for detail in status.details:
        try:
            details.append(_render_any(detail, ctx))
        except _RenderError:
            details.append({"@type": detail.type_url, "value": base64.b64encode(detail.value).decode("ascii")})
    return status.code, status.message, details


# -- google.api.HttpBody: raw bytes with their content type, in either direction -----------------------------------


def returns_http_body(method: MethodInfo, response_body: str = "") -> bool:
    """Whether the answer (or its `response_body` field) is a google.api.HttpBody, sent as raw bytes."""
    descriptor: Descriptor | None = method.output_descriptor
    if response_body:
        field = method.output_descriptor.fields_by_name.get(response_body)
        descriptor = field.message_type if field is not None and not field.is_repeated else None
    return descriptor is not None and descriptor.full_name == HTTP_BODY


def render_http_body(method: MethodInfo, data: bytes, response_body: str = "") -> tuple[str, bytes]:
    """(content_type, data) of an upstream answer that is (or holds at `response_body`) a google.api.HttpBody."""
    try:
        message = method.output_class.FromString(data)
    except (DecodeError, RuntimeWarning) as exc:
        name = method.output_descriptor.full_name
        raise TranscodeError(Code.INTERNAL, f"upstream response is not a valid {name}: {exc}") from None
    body: Any = getattr(message, response_body) if response_body else message
    return body.content_type, body.data


def http_body_field(binding_body: str, input_descriptor: Descriptor) -> str | None:
    """ "" when the whole request is an HttpBody (body "*"), the field's name when `body:` names an HttpBody
    field, else None: then the request body is JSON."""
    if binding_body == "*":
        return "" if input_descriptor.full_name == HTTP_BODY else None
    field = input_descriptor.fields_by_name.get(binding_body) if binding_body else None
    if field is None or field.is_repeated or field.message_type is None:
        return None
    return binding_body if field.message_type.full_name == HTTP_BODY else None


def fill_http_body(message: Message, field_name: str, content_type: str, data: bytes) -> None:
    """Put the raw request body and its Content-Type into the request's HttpBody (the message itself for "")."""
    target: Any = getattr(message, field_name) if field_name else message
    target.content_type = content_type
    target.data = data
