"""DescriptorIndex + HttpRules -> an OpenAPI 3.1 document (a dict), described the way grpc-gateway's openapiv2 does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from transcoder.descriptors import DescriptorIndex, HttpBinding, MethodInfo
from transcoder.httprule import DEEP_WILDCARD, WILDCARD, PathTemplate
from transcoder.response import JsonOptions
from transcoder.streaming import NDJSON_TYPE, StreamFormat, negotiate_stream_format

__all__ = ["OPENAPI_VERSION", "build_openapi", "openapi_path"]

OPENAPI_VERSION = "3.1.0"
_OPERATION_KINDS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"})
_NDJSON = NDJSON_TYPE
_JSON = "application/json"
_SSE = "text/event-stream"
# Every Accept header that negotiate_stream_format tells apart: none of its types, NDJSON, SSE.
_STREAM_ACCEPTS = (None, _NDJSON, _SSE)
_STATUS = "google.rpc.Status"
_HTTP_BODY = "google.api.HttpBody"  # raw bytes in its own content type, not JSON (as grpc-gateway serves it)
_RAW = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_MAX_QUERY_DEPTH = 8  # dotted query names deeper than this are left out (grpc-gateway stops on recursion too)

_T = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    # As grpc-gateway: uint32 is an int64 that cannot be negative.
    _T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    _T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    # protojson writes 64-bit integers as strings: a JavaScript number cannot hold them exactly.
    _T.TYPE_INT64: {"type": "string", "format": "int64"},
    _T.TYPE_SINT64: {"type": "string", "format": "int64"},
    _T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}

_WRAPPERS = {
    "google.protobuf.DoubleValue": _T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _T.TYPE_FLOAT,
    "google.protobuf.Int64Value": _T.TYPE_INT64,
    "google.protobuf.UInt64Value": _T.TYPE_UINT64,
    "google.protobuf.Int32Value": _T.TYPE_INT32,
    "google.protobuf.UInt32Value": _T.TYPE_UINT32,
    "google.protobuf.BoolValue": _T.TYPE_BOOL,
    "google.protobuf.StringValue": _T.TYPE_STRING,
    "google.protobuf.BytesValue": _T.TYPE_BYTES,
}

# Well-known types in their JSON forms, written inline as grpc-gateway does (wrappers are added below).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "description": 'A duration in seconds with up to nine fractional digits, ending in "s", e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated field paths in lowerCamel, e.g. "title,author".',
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": {}},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "description": 'A message of the type "@type" names, its fields beside "@type".',
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": {},
    },
    **{name: dict(_SCALARS[kind]) for name, kind in _WRAPPERS.items()},
}
# Message types a single query value can fill (see query.py's _FILLERS); other messages are split into dotted names.
_QUERY_TEXT = frozenset(_WELL_KNOWN) - {"google.protobuf.Any", "google.protobuf.Empty"}
_JSON_TEXT = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def build_openapi(
    index: DescriptorIndex,
    methods: Iterable[MethodInfo] | None = None,
    *,
    title: str,
    version: str,
    json_options: JsonOptions = JsonOptions(),  # noqa: B008 - frozen dataclass, safe as a default
    server_url: str | None = None,
    bindings: Iterable[HttpBinding] | None = None,
    file_set: descriptor_pb2.FileDescriptorSet | None = None,
    stream_format: StreamFormat = StreamFormat.NDJSON,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the HTTP bindings of `methods` (default: every method of `index`).

    `bindings`, when given, replaces the methods' own (a route's auto-mapped or fixed-method bindings).
    `file_set` is the set `index` was built from: its source_code_info gives summaries and descriptions
    (a DescriptorPool drops comments, so the index cannot supply them).
    `stream_format` is the route's framing of server-streamed answers: a streamed answer lists every
    content type the gateway can send for it (streaming.negotiate_stream_format), each marked with
    `x-protogate-stream` (`ndjson`: the schema describes one line; `sse`: one event; `array`: the whole body).
    """
    if bindings is None:
        scope = methods if methods is not None else [m for key, m in index.methods.items() if key.startswith("/")]
        bindings = [binding for method in scope for binding in method.bindings]
    builder = _Builder(index, json_options, _comments(file_set) if file_set is not None else {}, stream_format)
    for binding in bindings:
        builder.add(binding)
    return builder.document(title, version, server_url)


def openapi_path(template: PathTemplate) -> str:
    """A template as an OpenAPI path: a variable becomes `{field.path}`; a custom verb stays (`/v1/{name}:publish`)."""
    starts = {variable.start: variable for variable in template.variables}
    parts: list[str] = []
    i = 0
    while i < len(template.segments):
        variable = starts.get(i)
        if variable is None:
            parts.append(template.segments[i])
            i += 1
        else:
            parts.append("{" + variable.name + "}")
            i = variable.end
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


def _segments_pattern(segments: tuple[str, ...]) -> str:
    regex = []
    for segment in segments:
        regex.append("[^/]+" if segment == WILDCARD else ".*" if segment == DEEP_WILDCARD else _escape(segment))
    return "^" + "/".join(regex) + "$"


def _escape(literal: str) -> str:
    return "".join("\\" + ch if ch in ".^$*+?()[]{}|\\" else ch for ch in literal)


# -- comments -----------------------------------------------------------------------------------------------------


def _comments(file_set: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Leading comments by full name (enum values as `pkg.Enum.VALUE`), from each file's source_code_info."""
    found: dict[str, str] = {}
    for file in file_set.file:
        by_path = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        if not by_path:
            continue

        def note(name: str, path: tuple[int, ...], by_path: dict[tuple[int, ...], str] = by_path) -> None:
            text = _clean_comment(by_path.get(path, ""))
            if text:
                found[name] = text

        def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
            name = scope + enum.name
            note(name, path)
            for i, value in enumerate(enum.value):
                note(f"{name}.{value.name}", (*path, 2, i))

        def walk_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
            name = scope + message.name
            note(name, path)
            for i, field in enumerate(message.field):
                note(f"{name}.{field.name}", (*path, 2, i))
            for i, nested in enumerate(message.nested_type):
                walk_message(nested, (*path, 3, i), name + ".")
            for i, enum in enumerate(message.enum_type):
                walk_enum(enum, (*path, 4, i), name + ".")

        scope = f"{file.package}." if file.package else ""
        for i, message in enumerate(file.message_type):
            walk_message(message, (4, i), scope)
        for i, enum in enumerate(file.enum_type):
            walk_enum(enum, (5, i), scope)
        for i, service in enumerate(file.service):
            note(scope + service.name, (6, i))
            for j, method in enumerate(service.method):
                note(f"{scope}{service.name}.{method.name}", (6, i, 2, j))
    return found


def _clean_comment(text: str) -> str:
    # protoc keeps the space after "//" on every line; one is dropped, deeper indentation is kept.
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _summary(comment: str) -> str:
    # The first sentence of the first paragraph; the whole comment goes to the description.
    first = " ".join(comment.split("\n\n", 1)[0].split())
    end = first.find(". ")
    return first[: end + 1] if end >= 0 else first


# -- the document --------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(
        self, index: DescriptorIndex, options: JsonOptions, comments: dict[str, str], stream_format: StreamFormat
    ) -> None:
        self.index = index
        self.options = options
        self.comments = comments
        # (content type, framing) of a streamed answer, the route's default first.
        chosen = dict.fromkeys(negotiate_stream_format(accept, stream_format) for accept in _STREAM_ACCEPTS)
        self.stream_media = [(content_type, framing) for framing, content_type in chosen]
        self.schemas: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, Any]] = {}
        self.operation_ids: set[str] = set()
        self.per_method: dict[str, int] = {}
        self.unlisted: list[dict[str, str]] = []

    def document(self, title: str, version: str, server_url: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {"openapi": OPENAPI_VERSION, "info": {"title": title, "version": version}}
        if server_url:
            doc["servers"] = [{"url": server_url}]
        doc["tags"] = list(self.tags.values())
        doc["paths"] = self.paths
        doc["components"] = {"schemas": dict(sorted(self.schemas.items()))}
        if self.unlisted:
            doc["x-protogate-unlisted"] = self.unlisted
        return doc

    def add(self, binding: HttpBinding) -> None:
        method = binding.method
        path = openapi_path(binding.template)
        kind = binding.http_method.lower()
        item = self.paths.setdefault(path, {})
        if binding.http_method not in _OPERATION_KINDS or kind in item:
            reason = "no OpenAPI operation for this HTTP method" if kind not in item else "path and method taken"
            self.unlisted.append({"method": binding.http_method, "path": path, "rpc": method.full_name, "why": reason})
            if not item:
                del self.paths[path]
            return
        item[kind] = self.operation(binding)

    def operation(self, binding: HttpBinding) -> dict[str, Any]:
        method = binding.method
        service = method.descriptor.containing_service
        count = self.per_method.get(method.full_name, 0)
        self.per_method[method.full_name] = count + 1
        operation_id = f"{service.name}_{method.descriptor.name}" + (f"_{count}" if count else "")
        while operation_id in self.operation_ids:  # the same short names in two packages
            count += 1
            operation_id = f"{service.name}_{method.descriptor.name}_{count}"
        self.operation_ids.add(operation_id)
        if service.name not in self.tags:
            self.tags[service.name] = _described({"name": service.name}, self.comments.get(service.full_name))
        op: dict[str, Any] = {"operationId": operation_id, "tags": [service.name]}
        comment = self.comments.get(method.full_name)
        if comment:
            op["summary"] = _summary(comment)
            if op["summary"] != " ".join(comment.split()):
                op["description"] = comment
        if method.descriptor.GetOptions().deprecated:
            op["deprecated"] = True
        parameters = self.path_parameters(binding)
        if binding.body != "*":
            skip = {variable.name for variable in binding.template.variables}
            if binding.body:
                skip.add(binding.body)
            parameters.extend(self.query_parameters(method.input_descriptor, skip, "", "", (), 0))
        if parameters:
            op["parameters"] = parameters
        if binding.body:
            body_field = method.input_descriptor.fields_by_name.get(binding.body)
            body_type = method.input_descriptor if binding.body == "*" else body_field and body_field.message_type
            if body_type is not None and body_type.full_name == _HTTP_BODY:
                op["requestBody"] = {"content": dict(_RAW)}
            elif method.client_streaming:
                # Read line by line whatever the Content-Type; grpc-gateway's clients send application/json.
                line = {"schema": self.body_schema(binding), "x-protogate-stream": str(StreamFormat.NDJSON)}
                op["requestBody"] = {
                    "description": "A stream of request messages: one JSON object per line, each sent upstream "
                    "as it arrives.",
                    "content": {_NDJSON: line, _JSON: dict(line)},
                }
            else:
                op["requestBody"] = {"content": {_JSON: {"schema": self.body_schema(binding)}}}
        streamed = method.server_streaming and not self.returns_raw(binding)
        op["responses"] = {
            "200": {
                "description": _STREAMED if streamed else "A successful response.",
                "content": self.success_content(binding),
            },
            "default": {
                "description": "An error: a google.rpc.Status as JSON.",
                "content": {_JSON: {"schema": self.message_ref(self.index.pool.FindMessageTypeByName(_STATUS))}},
            },
        }
        op["x-protogate-grpc-method"] = method.grpc_path
        return op

    # -- parameters

    def path_parameters(self, binding: HttpBinding) -> list[dict[str, Any]]:
        params = []
        template = binding.template
        for variable in template.variables:
            field = _field_at(binding.method.input_descriptor, variable.field_path)
            covered = template.segments[variable.start : variable.end]
            param: dict[str, Any] = {"name": variable.name, "in": "path", "required": True}
            description = self.comments.get(field.full_name, "") if field is not None else ""
            if covered == (WILDCARD,):
                param["schema"] = self.element_schema(field) if field is not None else {"type": "string"}
            else:
                # {name=shelves/*/books/*}: one OpenAPI parameter whose value carries unescaped "/"s.
                shape = "/".join(covered)
                param["schema"] = {"type": "string", "pattern": _segments_pattern(covered)}
                note = f"Matches `{shape}`; its `/` separators are sent unescaped."
                description = f"{description}\n\n{note}" if description else note
                param["x-protogate-path-pattern"] = shape
                if DEEP_WILDCARD in covered:
                    param["x-protogate-multi-segment"] = True
            if description:
                param["description"] = description
            params.append(param)
        return params

    def query_parameters(
        self,
        message: Descriptor,
        skip: set[str],
        proto_prefix: str,
        json_prefix: str,
        seen: tuple[str, ...],
        depth: int,
    ) -> list[dict[str, Any]]:
        """grpc-gateway's rule: every field not bound by the path or the body, nested messages as dotted names."""
        params: list[dict[str, Any]] = []
        seen = (*seen, message.full_name)
        for field in message.fields:
            proto_path = proto_prefix + field.name
            json_name = json_prefix + self.json_name(field)
            if proto_path in skip or _is_map(field):
                continue
            child = field.message_type
            if child is not None and child.full_name not in _QUERY_TEXT:
                # A message field is filled field by field; a repeated or recursive one cannot be.
                if field.is_repeated or child.full_name in seen or depth >= _MAX_QUERY_DEPTH:
                    continue
                if child.full_name == "google.protobuf.Any":
                    continue
                params.extend(self.query_parameters(child, skip, proto_path + ".", json_name + ".", seen, depth + 1))
                continue
            schema = self.element_schema(field)
            if child is not None and child.full_name in _JSON_TEXT:
                schema = {"type": "string", "description": "JSON text."}
            param: dict[str, Any] = {"name": json_name, "in": "query"}
            if field.is_repeated:
                param["schema"] = {"type": "array", "items": schema}
                param["style"], param["explode"] = "form", True
            else:
                param["schema"] = schema
            param = _described(param, self.comments.get(field.full_name))
            if field.GetOptions().deprecated:
                param["deprecated"] = True
            params.append(param)
        return params

    # -- bodies

    def body_schema(self, binding: HttpBinding) -> dict[str, Any]:
        message = binding.method.input_descriptor
        if binding.body != "*":
            return self.field_schema(message.fields_by_name[binding.body], nullable=False)
        ref = self.message_ref(message)
        bound = {variable.field_path[0] for variable in binding.template.variables if len(variable.field_path) == 1}
        if not bound or message.full_name in _WELL_KNOWN:
            return ref
        # The path sets those fields; the body is the rest of the message (grpc-gateway's "...Body" definitions).
        full = self.schemas[message.full_name]
        names = {self.json_name(message.fields_by_name[name]) for name in bound}
        schema = {k: v for k, v in full.items() if k != "properties"}
        schema["properties"] = {k: v for k, v in full.get("properties", {}).items() if k not in names}
        return schema

    @staticmethod
    def returns_raw(binding: HttpBinding) -> bool:
        return binding.method.output_descriptor.full_name == _HTTP_BODY and not binding.response_body

    def success_content(self, binding: HttpBinding) -> dict[str, Any]:
        output = binding.method.output_descriptor
        if self.returns_raw(binding):
            return dict(_RAW)  # streamed or not, the body is the data of each HttpBody in turn
        if binding.response_body:
            schema = self.field_schema(output.fields_by_name[binding.response_body], nullable=False)
        else:
            schema = self.message_ref(output)
        if not binding.method.server_streaming:
            return {_JSON: {"schema": schema}}
        status = self.message_ref(self.index.pool.FindMessageTypeByName(_STATUS))
        return {
            content_type: {"schema": _stream_schema(framing, schema, status), "x-protogate-stream": str(framing)}
            for content_type, framing in self.stream_media
        }

    # -- schemas

    def json_name(self, field: FieldDescriptor) -> str:
        return field.name if self.options.use_proto_names else field.json_name

    def message_ref(self, message: Descriptor) -> dict[str, Any]:
        inline = _WELL_KNOWN.get(message.full_name)
        if inline is not None:
            return dict(inline)
        name = message.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # claimed before the fields, so a recursive message refers to itself
            self.schemas[name] = self.message_schema(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def enum_ref(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = self.enum_schema(enum)
        return {"$ref": f"#/components/schemas/{enum.full_name}"}

    def message_schema(self, message: Descriptor) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for field in message.fields:
            properties[self.json_name(field)] = self.field_schema(field, nullable=True)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        description = self.comments.get(message.full_name, "")
        oneofs = {
            oneof.name: [self.json_name(f) for f in oneof.fields]
            for oneof in message.oneofs
            if not (len(oneof.fields) == 1 and oneof.fields[0].has_presence and _is_synthetic(oneof))
        }
        if oneofs:
            notes = [f"Only one of {', '.join(f'`{n}`' for n in names)} may be set." for names in oneofs.values()]
            description = "\n\n".join(part for part in (description, *notes) if part)
            schema["x-protogate-oneofs"] = oneofs
        if description:
            schema["description"] = description
        if message.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def enum_schema(self, enum: EnumDescriptor) -> dict[str, Any]:
        if self.options.enums_as_ints:
            schema: dict[str, Any] = {"type": "integer", "format": "int32", "enum": [v.number for v in enum.values]}
        else:
            schema = {"type": "string", "enum": [v.name for v in enum.values]}
        lines = []
        for value in enum.values:
            comment = self.comments.get(f"{enum.full_name}.{value.name}", "")
            flag = " (deprecated)" if value.GetOptions().deprecated else ""
            if comment or flag:
                lines.append(f"- `{value.name}` ({value.number}){flag}: {' '.join(comment.split())}".rstrip(": "))
        description = "\n".join(part for part in (self.comments.get(enum.full_name, ""), "\n".join(lines)) if part)
        if description:
            schema["description"] = description.strip()
        if enum.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def element_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            return self.enum_ref(field.enum_type)
        return dict(_SCALARS[field.type])

    def field_schema(self, field: FieldDescriptor, *, nullable: bool) -> dict[str, Any]:
        if _is_map(field):
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.element_schema(value)}
            if key.type == _T.TYPE_BOOL:
                schema["propertyNames"] = {"enum": ["true", "false"]}
            elif key.type not in (_T.TYPE_STRING,):
                schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.element_schema(field)}
        else:
            schema = self.element_schema(field)
            # protojson writes an unset message field (and an unset proto2 scalar) as null, and reads null as unset.
            if nullable and _writes_null(field):
                schema = {"anyOf": [schema, {"type": "null"}]}
        comment = self.comments.get(field.full_name)
        if comment:
            schema = {**schema, "description": comment}
        if field.GetOptions().deprecated:
            schema = {**schema, "deprecated": True}
        return schema


_STREAMED = (
    "A stream of messages, written as they arrive, framed by the route's stream_format; "
    "`Accept: text/event-stream` asks for server-sent events. A failure before the first message "
    "is an error answer instead."
)


def _stream_schema(framing: StreamFormat, message: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """What streaming.StreamFramer writes: the schema of one NDJSON line, of one SSE event, or of the whole array."""
    if framing == StreamFormat.NDJSON:
        return {
            "type": "object",
            "description": 'One line per message, {"result": <message>}; a failure after the first message '
            'is a last line {"error": <google.rpc.Status>}.',
            "properties": {"result": message, "error": status},
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        }
    if framing == StreamFormat.SSE:

        def data(schema: dict[str, Any]) -> dict[str, Any]:
            return {"type": "string", "contentMediaType": _JSON, "contentSchema": schema}

        return {
            "description": "One event per message, its data the message as JSON; a failure after the first "
            "message is an `event: error` whose data is a google.rpc.Status.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"event": {"const": "message"}, "data": data(message)},
                },
                {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {"event": {"const": "error"}, "data": data(status)},
                },
            ],
        }
    failure = {"type": "object", "required": ["error"], "properties": {"error": status}, "additionalProperties": False}
    return {
        "type": "array",
        "description": "The messages as one JSON array; a failure after the first message ends it with "
        '{"error": <google.rpc.Status>}.',
        "items": {"anyOf": [message, failure]},
    }


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _writes_null(field: FieldDescriptor) -> bool:
    message = field.message_type
    if message is not None:
        return message.full_name != "google.protobuf.Value"  # a Value's schema admits null already
    return field.has_presence and field.containing_oneof is None  # proto2 scalars; not proto3 `optional`


def _is_synthetic(oneof: Any) -> bool:
    # protoc names the oneof of a proto3 `optional` field "_<field>".
    return oneof.name == "_" + oneof.fields[0].name


def _field_at(message: Descriptor, path: tuple[str, ...]) -> FieldDescriptor | None:
    field = None
    current: Descriptor | None = message
    for name in path:
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            return None
        current = field.message_type
    return field


def _described(obj: dict[str, Any], comment: str | None) -> dict[str, Any]:
    if comment:
        obj["description"] = comment
    return obj
