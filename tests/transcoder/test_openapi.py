"""transcoder/openapi.py: documents that a real validator accepts, and what they say about each binding."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from openapi_spec_validator import validate
from protoc import GOOGLEAPIS_DIR, WELL_KNOWN_DIR

from transcoder.descriptors import DescriptorIndex
from transcoder.httprule import parse_template
from transcoder.openapi import build_openapi, openapi_path
from transcoder.response import JsonOptions
from transcoder.streaming import StreamFormat

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PROTOS = REPO / "protos" / "examples"

EXTRA_PROTO = """
syntax = "proto3";
package protogate.test.extra;
import "google/api/annotations.proto";
import "google/api/httpbody.proto";

// A tree: a message that holds itself.
message Node {
  string id = 1;
  Node parent = 2;
  repeated Node children = 3;
  string old_name = 4 [deprecated = true];
}

enum Mode {
  option deprecated = true;
  MODE_UNSPECIFIED = 0;
  // The fast one.
  MODE_FAST = 1 [deprecated = true];
}

message FindRequest {
  Node node = 1;
  Mode mode = 2;
  string path = 3;
}

service Extra {
  // Old; use Find2.
  rpc Find(FindRequest) returns (Node) {
    option deprecated = true;
    option (google.api.http) = {get: "/v1/files/{path=**}"};
  }
  // Streams the tree.
  rpc Walk(FindRequest) returns (stream Node) {
    option (google.api.http) = {get: "/v1/walk"};
  }
  rpc Upload(stream Node) returns (Node) {
    option (google.api.http) = {post: "/v1/upload" body: "*"};
  }
  rpc Download(FindRequest) returns (stream google.api.HttpBody) {
    option (google.api.http) = {get: "/v1/download/{path}"};
  }
  rpc Put(google.api.HttpBody) returns (Node) {
    option (google.api.http) = {put: "/v1/put" body: "*"};
  }
  rpc Lock(FindRequest) returns (Node) {
    option (google.api.http) = {custom {kind: "LOCK" path: "/v1/lock/{path}"}};
  }
}
"""


def _compile(proto_paths: list[str], includes: list[Path]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["protoc", *(f"-I{d}" for d in [*includes, GOOGLEAPIS_DIR, WELL_KNOWN_DIR])]
        args += ["--include_imports", "--include_source_info", f"--descriptor_set_out={out}", *proto_paths]
        assert protoc.main(args) == 0
        return out.read_bytes()


def _with_comments(data: bytes) -> tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]:
    return DescriptorIndex.from_bytes(data), descriptor_pb2.FileDescriptorSet.FromString(data)


@pytest.fixture(scope="module")
def bookstore() -> tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]:
    return _with_comments(_compile(["bookstore/v1/bookstore.proto"], [EXAMPLE_PROTOS]))


@pytest.fixture(scope="module")
def bookstore_doc(bookstore: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]) -> dict[str, Any]:
    index, file_set = bookstore
    return build_openapi(index, title="Bookstore", version="1.0", file_set=file_set, server_url="http://x:1")


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]:
    root = tmp_path_factory.mktemp("protos")
    (root / "extra.proto").write_text(EXTRA_PROTO)
    return _with_comments(_compile(["extra.proto"], [root]))


def _op(doc: dict[str, Any], path: str, kind: str) -> dict[str, Any]:
    return doc["paths"][path][kind]


def _params(op: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in op.get("parameters", []) if p["in"] == where}


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]


# -- validity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [JsonOptions(), JsonOptions(use_proto_names=True), JsonOptions(enums_as_ints=True)],
    ids=["default", "proto-names", "enums-as-ints"],
)
def test_kitchen_document_is_valid_openapi(kitchen_index: DescriptorIndex, options: JsonOptions) -> None:
    doc = build_openapi(kitchen_index, title="Kitchen", version="1", json_options=options)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "Kitchen", "version": "1"}


def test_bookstore_document_is_valid_openapi(bookstore_doc: dict[str, Any]) -> None:
    validate(bookstore_doc)
    assert bookstore_doc["servers"] == [{"url": "http://x:1"}]


def test_extra_document_is_valid_openapi(extra: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]) -> None:
    index, file_set = extra
    validate(build_openapi(index, title="Extra", version="1", file_set=file_set))


def test_the_module_stays_pure() -> None:
    code = "import transcoder.openapi, sys; assert not {'aiohttp', 'grpc'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# -- paths and operations --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/shelves/{shelf}", "/v1/shelves/{shelf}"),
        ("/v1/{name=shelves/*/books/*}", "/v1/{name}"),
        ("/v1/shelves/{shelf}/books/{book}:publish", "/v1/shelves/{shelf}/books/{book}:publish"),
        ("/v1/shelves/{shelf}/books/{book.id}", "/v1/shelves/{shelf}/books/{book.id}"),
        ("/v1/files/{path=**}", "/v1/files/{path}"),
        ("/v1/{name=kitchens/*}:clean", "/v1/{name}:clean"),
    ],
)
def test_openapi_path(template: str, path: str) -> None:
    assert openapi_path(parse_template(template)) == path


def test_every_binding_is_an_operation_with_a_unique_id(
    bookstore: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet], bookstore_doc: dict[str, Any]
) -> None:
    ops = [op for item in bookstore_doc["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in ops]
    index = bookstore[0]
    documented = [b for b in index.bindings if b.http_method in ("GET", "POST", "PUT", "PATCH", "DELETE")]
    assert len(ids) == len(set(ids)) == len(documented)  # every binding, GetBook's additional one included
    assert _op(bookstore_doc, "/v1/shelves/{shelf}/books/{book}", "get")["operationId"] == "Bookstore_GetBook"
    assert _op(bookstore_doc, "/v1/books/{book}", "get")["operationId"] == "Bookstore_GetBook_1"
    assert all(op["tags"] == ["Bookstore"] for op in ops)
    assert _op(bookstore_doc, "/v1/shelves", "get")["x-protogate-grpc-method"] == "/bookstore.v1.Bookstore/ListShelves"


def test_methods_limit_the_document(bookstore: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]) -> None:
    index, _ = bookstore
    doc = build_openapi(index, [index.method("bookstore.v1.Bookstore.GetShelf")], title="t", version="1")
    assert list(doc["paths"]) == ["/v1/shelves/{shelf}"]
    assert "bookstore.v1.Book" not in doc["components"]["schemas"]


def test_multi_segment_variables_carry_their_pattern(
    bookstore_doc: dict[str, Any], extra: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet]
) -> None:
    name = _params(_op(bookstore_doc, "/v1/{name}", "get"), "path")["name"]
    assert name["required"] is True
    assert name["schema"] == {"type": "string", "pattern": "^shelves/[^/]+/books/[^/]+$"}
    assert name["x-protogate-path-pattern"] == "shelves/*/books/*"
    assert "x-protogate-multi-segment" not in name
    assert name["description"].startswith('The book\'s resource name: "shelves/{shelf}/books/{book}".')
    index, file_set = extra
    doc = build_openapi(index, title="t", version="1", file_set=file_set)
    path = _params(_op(doc, "/v1/files/{path}", "get"), "path")["path"]
    assert path["x-protogate-multi-segment"] is True
    assert path["schema"]["pattern"] == "^.*$"


def test_path_parameters_have_their_field_types(bookstore_doc: dict[str, Any]) -> None:
    update = _op(bookstore_doc, "/v1/shelves/{shelf}/books/{book.id}", "patch")
    path = _params(update, "path")
    assert set(path) == {"shelf", "book.id"}
    assert path["book.id"]["schema"] == {"type": "string", "format": "int64"}
    assert path["shelf"]["schema"] == {"type": "string", "format": "int64"}


def test_query_parameters_are_the_fields_left_over(bookstore_doc: dict[str, Any]) -> None:
    query = _params(_op(bookstore_doc, "/v1/shelves/{shelf}/books", "get"), "query")
    assert list(query) == ["pageSize", "pageToken", "genre", "author"]  # shelf is in the path
    assert query["genre"]["schema"] == {"$ref": "#/components/schemas/bookstore.v1.Genre"}
    assert query["pageSize"]["description"].startswith("Maximum number of books to return")
    update = _op(bookstore_doc, "/v1/shelves/{shelf}/books/{book.id}", "patch")
    assert list(_params(update, "query")) == ["updateMask"]  # book is the body
    publish = _op(bookstore_doc, "/v1/shelves/{shelf}/books/{book}:publish", "post")
    assert _params(publish, "query") == {}  # body "*": grpc-gateway never reads the query string


def test_query_parameters_nest_with_dots_and_stop_on_recursion(kitchen_index: DescriptorIndex) -> None:
    doc = build_openapi(kitchen_index, title="t", version="1")
    query = _params(_op(doc, "/v1/kitchens/{nested.name}", "get"), "query")
    assert "nested.name" not in query  # bound by the path
    assert {"nested.count", "nested.color", "nested.labels", "name", "kitchen.int64Value"} <= set(query)
    assert not any(".child" in name for name in query)  # Nested.child is a Nested again
    assert not any(
        name.startswith(("kitchen.stringToInt32", "kitchen.repeatedNested", "kitchen.any")) for name in query
    )
    assert query["nested.labels"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["nested.labels"]["explode"] is True
    assert query["kitchen.timestamp"]["schema"] == {"type": "string", "format": "date-time"}
    assert query["kitchen.wrappedInt64"]["schema"] == {"type": "string", "format": "int64"}
    assert query["kitchen.structValue"]["schema"]["type"] == "string"  # JSON text
    assert query["kitchen.choiceNested.name"]["schema"] == {"type": "string"}
    proto_names = build_openapi(kitchen_index, title="t", version="1", json_options=JsonOptions(use_proto_names=True))
    assert "kitchen.int64_value" in _params(_op(proto_names, "/v1/kitchens/{nested.name}", "get"), "query")


def test_request_bodies_follow_the_rule(bookstore_doc: dict[str, Any], kitchen_index: DescriptorIndex) -> None:
    create = _op(bookstore_doc, "/v1/shelves", "post")["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/bookstore.v1.Shelf"}
    publish = _op(bookstore_doc, "/v1/shelves/{shelf}/books/{book}:publish", "post")
    body = publish["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "object"
    assert list(body["properties"]) == ["publisher"]  # shelf and book come from the path
    assert "requestBody" not in _op(bookstore_doc, "/v1/shelves/{shelf}", "get")
    doc = build_openapi(kitchen_index, title="t", version="1")
    whole = _op(doc, "/v1/kitchens", "post")["requestBody"]["content"]["application/json"]["schema"]
    assert whole == {"$ref": "#/components/schemas/protogate.test.v1.Kitchen"}
    items = _op(doc, "/v1/{name}/items", "put")["requestBody"]["content"]["application/json"]["schema"]
    assert items == {"type": "array", "items": {"$ref": "#/components/schemas/protogate.test.v1.Nested"}}


def test_responses_are_the_output_and_a_status(bookstore_doc: dict[str, Any], kitchen_index: DescriptorIndex) -> None:
    responses = _op(bookstore_doc, "/v1/shelves/{shelf}", "get")["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/bookstore.v1.Shelf"
    }
    error = responses["default"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/google.rpc.Status"}
    status = _schema(bookstore_doc, "google.rpc.Status")["properties"]
    assert status["code"] == {"type": "integer", "format": "int32"}
    assert status["message"] == {"type": "string"}
    assert status["details"]["type"] == "array"
    assert status["details"]["items"]["properties"] == {"@type": {"type": "string"}}
    empty = _op(bookstore_doc, "/v1/shelves/{shelf}", "delete")["responses"]["200"]["content"]["application/json"]
    assert empty["schema"] == {"type": "object"}
    doc = build_openapi(kitchen_index, title="t", version="1")
    listed = _op(doc, "/v1/kitchens", "get")["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"type": "array", "items": {"$ref": "#/components/schemas/protogate.test.v1.Kitchen"}}


# -- schemas ---------------------------------------------------------------------------------------------------


def test_scalar_and_map_schemas(kitchen_index: DescriptorIndex) -> None:
    doc = build_openapi(kitchen_index, title="t", version="1")
    props = _schema(doc, "protogate.test.v1.Kitchen")["properties"]
    assert props["int64Value"] == {"type": "string", "format": "int64"}
    assert props["sfixed64Value"] == {"type": "string", "format": "int64"}
    assert props["uint64Value"] == {"type": "string", "format": "uint64"}
    assert props["fixed64Value"] == {"type": "string", "format": "uint64"}
    assert props["int32Value"] == {"type": "integer", "format": "int32"}
    assert props["doubleValue"] == {"type": "number", "format": "double"}
    assert props["bytesValue"] == {"type": "string", "format": "byte"}
    assert props["boolValue"] == {"type": "boolean"}
    assert props["repeatedInt64"] == {"type": "array", "items": {"type": "string", "format": "int64"}}
    assert props["stringToInt32"] == {"type": "object", "additionalProperties": {"type": "integer", "format": "int32"}}
    assert props["int64ToNested"]["propertyNames"] == {"pattern": "^-?[0-9]+$"}
    assert props["boolToString"]["propertyNames"] == {"enum": ["true", "false"]}
    assert props["nested"] == {"anyOf": [{"$ref": "#/components/schemas/protogate.test.v1.Nested"}, {"type": "null"}]}
    assert "optionalInt32" in props and "anyOf" not in props["optionalInt32"]  # unset: left out, never null
    assert set(doc["components"]["schemas"]) == {
        "google.rpc.Status",
        "protogate.test.v1.Color",
        "protogate.test.v1.GetKitchenRequest",
        "protogate.test.v1.Kitchen",
        "protogate.test.v1.Nested",
    }  # only what the document refers to: ListKitchens answers with its response_body field


def test_well_known_types_in_their_json_forms(kitchen_index: DescriptorIndex) -> None:
    doc = build_openapi(kitchen_index, title="t", version="1")
    props = _schema(doc, "protogate.test.v1.Kitchen")["properties"]

    def inner(name: str) -> dict[str, Any]:
        return props[name]["anyOf"][0]

    assert inner("timestamp") == {"type": "string", "format": "date-time"}
    assert inner("duration")["type"] == "string"
    assert inner("fieldMask")["type"] == "string"
    assert inner("structValue") == {"type": "object", "additionalProperties": {}}
    assert "type" not in props["value"]  # any JSON value, null included
    assert inner("listValue") == {"type": "array", "items": {}}
    assert inner("empty") == {"type": "object"}
    assert inner("any")["properties"] == {"@type": {"type": "string"}}
    assert inner("wrappedInt64") == {"type": "string", "format": "int64"}
    assert inner("wrappedBool") == {"type": "boolean"}
    assert props["wrappedString"]["anyOf"][1] == {"type": "null"}
    assert props["repeatedTimestamp"] == {"type": "array", "items": {"type": "string", "format": "date-time"}}


def test_enums_oneofs_and_json_names(kitchen_index: DescriptorIndex) -> None:
    doc = build_openapi(kitchen_index, title="t", version="1")
    assert _schema(doc, "protogate.test.v1.Color") == {
        "type": "string",
        "enum": ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN", "COLOR_BLUE"],
    }
    kitchen = _schema(doc, "protogate.test.v1.Kitchen")
    assert kitchen["x-protogate-oneofs"] == {"choice": ["choiceName", "choiceId", "choiceNested"]}
    assert "Only one of `choiceName`, `choiceId`, `choiceNested` may be set." in kitchen["description"]
    ints = build_openapi(kitchen_index, title="t", version="1", json_options=JsonOptions(enums_as_ints=True))
    assert _schema(ints, "protogate.test.v1.Color")["enum"] == [0, 1, 2, 3]
    assert _schema(ints, "protogate.test.v1.Color")["type"] == "integer"
    names = build_openapi(kitchen_index, title="t", version="1", json_options=JsonOptions(use_proto_names=True))
    props = _schema(names, "protogate.test.v1.Kitchen")["properties"]
    assert "int64_value" in props and "int64Value" not in props


def test_descriptions_come_from_comments(bookstore_doc: dict[str, Any]) -> None:
    assert bookstore_doc["tags"][0]["name"] == "Bookstore"
    assert bookstore_doc["tags"][0]["description"].startswith("A bookstore of shelves, each holding books.")
    delete = _op(bookstore_doc, "/v1/shelves/{shelf}", "delete")
    assert delete["summary"] == "Deletes a shelf."
    assert delete["description"].startswith("Deletes a shelf. A shelf that still holds books is refused")
    get = _op(bookstore_doc, "/v1/shelves/{shelf}", "get")
    assert get["summary"] == "Returns one shelf."
    assert "description" not in get  # nothing beyond the summary
    shelf = _schema(bookstore_doc, "bookstore.v1.Shelf")
    assert shelf["description"] == "A shelf groups books under a theme."
    assert shelf["properties"]["id"]["description"] == "Output only. Assigned by the server."
    assert shelf["properties"]["createTime"]["description"] == "Output only. When the shelf was created."
    genre = _schema(bookstore_doc, "bookstore.v1.Genre")
    assert genre["description"].startswith("Kinds of book.\n- `GENRE_UNSPECIFIED` (0): No genre given")


def test_without_a_file_set_there_are_no_descriptions(
    bookstore: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet],
) -> None:
    index, _ = bookstore
    doc = build_openapi(index, title="t", version="1")
    assert "summary" not in _op(doc, "/v1/shelves/{shelf}", "get")
    assert "description" not in _schema(doc, "bookstore.v1.Shelf")


def test_deprecation_streams_recursion_and_custom_methods(
    extra: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet],
) -> None:
    index, file_set = extra
    doc = build_openapi(index, title="t", version="1", file_set=file_set)
    find = _op(doc, "/v1/files/{path}", "get")
    assert find["deprecated"] is True
    node = _schema(doc, "protogate.test.extra.Node")
    assert node["properties"]["parent"]["anyOf"][0] == {"$ref": "#/components/schemas/protogate.test.extra.Node"}
    assert node["properties"]["oldName"]["deprecated"] is True
    mode = _schema(doc, "protogate.test.extra.Mode")
    assert mode["deprecated"] is True
    assert "- `MODE_FAST` (1) (deprecated): The fast one." in mode["description"]
    assert "node.id" in _params(find, "query")
    assert not any(name.startswith(("node.parent", "node.children")) for name in _params(find, "query"))
    walk = _op(doc, "/v1/walk", "get")["responses"]["200"]["content"]
    assert list(walk) == ["application/json", "application/x-ndjson", "text/event-stream"]  # see test_stream_formats
    item = walk["application/json"]["schema"]["properties"]
    assert item["result"] == {"$ref": "#/components/schemas/protogate.test.extra.Node"}
    assert item["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}
    upload = _op(doc, "/v1/upload", "post")["requestBody"]["content"]
    assert list(upload) == ["application/x-ndjson", "application/json"]  # read line by line whatever it says
    assert upload["application/x-ndjson"] == {
        "schema": {"$ref": "#/components/schemas/protogate.test.extra.Node"},
        "x-protogate-stream": "ndjson",
    }
    raw = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    assert _op(doc, "/v1/download/{path}", "get")["responses"]["200"]["content"] == raw  # google.api.HttpBody
    assert _op(doc, "/v1/put", "put")["requestBody"]["content"] == raw
    assert "/v1/lock/{path}" not in doc["paths"]  # OpenAPI 3.1 has no LOCK operation
    assert doc["x-protogate-unlisted"] == [
        {
            "method": "LOCK",
            "path": "/v1/lock/{path}",
            "rpc": "protogate.test.extra.Extra.Lock",
            "why": "no OpenAPI operation for this HTTP method",
        }
    ]


# -- streamed answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_format", "content"),
    [
        (
            StreamFormat.NDJSON,
            {"application/json": "ndjson", "application/x-ndjson": "ndjson", "text/event-stream": "sse"},
        ),
        (StreamFormat.SSE, {"text/event-stream": "sse"}),
        (StreamFormat.ARRAY, {"application/json": "array", "text/event-stream": "sse"}),
    ],
)
def test_stream_formats(
    extra: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet],
    stream_format: StreamFormat,
    content: dict[str, str],
) -> None:
    """A streamed answer lists every content type the route can send (the default first), each with its framing."""
    index, _ = extra
    doc = build_openapi(index, title="t", version="1", stream_format=stream_format)
    validate(doc)
    walk = _op(doc, "/v1/walk", "get")["responses"]["200"]
    assert {media: entry["x-protogate-stream"] for media, entry in walk["content"].items()} == content
    assert list(walk["content"]) == list(content)
    assert "text/event-stream" in walk["description"]
    node = {"$ref": "#/components/schemas/protogate.test.extra.Node"}
    status = {"$ref": "#/components/schemas/google.rpc.Status"}
    sse = walk["content"]["text/event-stream"]["schema"]["oneOf"]
    assert sse[0]["properties"]["data"] == {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": node,
    }
    assert sse[1]["required"] == ["event", "data"] and sse[1]["properties"]["event"] == {"const": "error"}
    assert sse[1]["properties"]["data"]["contentSchema"] == status
    if stream_format == StreamFormat.ARRAY:
        array = walk["content"]["application/json"]["schema"]
        assert array["type"] == "array" and array["items"]["anyOf"][0] == node
        assert array["items"]["anyOf"][1]["properties"] == {"error": status}
    # Unary answers, raw HttpBody streams and errors do not depend on the stream format.
    assert list(_op(doc, "/v1/files/{path}", "get")["responses"]["200"]["content"]) == ["application/json"]
    assert list(_op(doc, "/v1/download/{path}", "get")["responses"]["200"]["content"]) == ["*/*"]
    assert list(_op(doc, "/v1/walk", "get")["responses"]["default"]["content"]) == ["application/json"]


def test_an_ndjson_line_holds_a_result_or_an_error(
    extra: tuple[DescriptorIndex, descriptor_pb2.FileDescriptorSet],
) -> None:
    import jsonschema

    index, _ = extra
    doc = build_openapi(index, title="t", version="1")
    line = _op(doc, "/v1/walk", "get")["responses"]["200"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**line, "components": doc["components"]})
    assert validator.is_valid({"result": {"id": "a"}})
    assert validator.is_valid({"error": {"code": 10, "message": "aborted", "details": []}})
    assert not validator.is_valid({})
    assert not validator.is_valid({"result": {"id": "a"}, "error": {"code": 10}})
    assert not validator.is_valid({"id": "a"})  # a bare message is not what the gateway writes
