"""Stream framing (ndjson, SSE, JSON array) and google.api.HttpBody helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.api import httpbody_pb2

from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError
from transcoder.request import build_request
from transcoder.response import fill_http_body, http_body_field, render_http_body, returns_http_body
from transcoder.streaming import StreamFormat, StreamFramer, negotiate_stream_format

BOOKSTORE = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.fixture(scope="module")
def bookstore() -> DescriptorIndex:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("bookstore_build_for_streaming", BOOKSTORE / "build.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return DescriptorIndex.from_file(module.build())


# --- framing -------------------------------------------------------------------------------------------------------


def test_ndjson_wraps_results_and_ends_with_an_error_line() -> None:
    framer = StreamFramer(StreamFormat.NDJSON)
    body = framer.message(b'{"a":1}') + framer.message(b'{"a":2}') + framer.error(10, "aborted", [{"@type": "x"}])
    body += framer.end()
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == [
        {"result": {"a": 1}},
        {"result": {"a": 2}},
        {"error": {"code": 10, "message": "aborted", "details": [{"@type": "x"}]}},
    ]
    assert body.endswith(b"\n")


def test_sse_frames_data_and_error_events() -> None:
    framer = StreamFramer(StreamFormat.SSE)
    body = framer.message(b'{"a":1}') + framer.error(5, "gone") + framer.end()
    assert body == b'data: {"a":1}\n\nevent: error\ndata: {"code":5,"message":"gone","details":[]}\n\n'


@pytest.mark.parametrize(
    ("messages", "error", "expected"),
    [
        ([], False, []),
        ([b"1"], False, [1]),
        ([b"1", b"2", b"3"], False, [1, 2, 3]),
        ([b"1"], True, [1, {"error": {"code": 13, "message": "boom", "details": []}}]),
        ([], True, [{"error": {"code": 13, "message": "boom", "details": []}}]),
    ],
)
def test_array_framing_is_always_valid_json(messages: list[bytes], error: bool, expected: list[object]) -> None:
    framer = StreamFramer(StreamFormat.ARRAY)
    body = b"".join(framer.message(m) for m in messages)
    if error:
        body += framer.error(13, "boom")
    body += framer.end()
    assert json.loads(body) == expected


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, StreamFormat.NDJSON, (StreamFormat.NDJSON, "application/json")),
        ("application/json", StreamFormat.NDJSON, (StreamFormat.NDJSON, "application/json")),
        ("application/x-ndjson", StreamFormat.NDJSON, (StreamFormat.NDJSON, "application/x-ndjson")),
        ("text/html, Text/Event-Stream;q=0.9", StreamFormat.NDJSON, (StreamFormat.SSE, "text/event-stream")),
        ("text/event-stream", StreamFormat.ARRAY, (StreamFormat.SSE, "text/event-stream")),
        ("application/x-ndjson", StreamFormat.ARRAY, (StreamFormat.ARRAY, "application/json")),
        ("*/*", StreamFormat.SSE, (StreamFormat.SSE, "text/event-stream")),
    ],
)
def test_negotiate_stream_format(accept: str | None, default: StreamFormat, expected: tuple[StreamFormat, str]) -> None:
    assert negotiate_stream_format(accept, default) == expected


# --- HttpBody ------------------------------------------------------------------------------------------------------


def test_http_body_response_detection_and_rendering(bookstore: DescriptorIndex) -> None:
    cover = bookstore.method("bookstore.v1.Bookstore.GetBookCover")
    export = bookstore.method("bookstore.v1.Bookstore.ExportBooks")
    book = bookstore.method("bookstore.v1.Bookstore.GetBook")
    assert returns_http_body(cover) and returns_http_body(export) and not returns_http_body(book)
    data = httpbody_pb2.HttpBody(content_type="image/png", data=b"\x89PNG").SerializeToString()
    assert render_http_body(cover, data) == ("image/png", b"\x89PNG")
    with pytest.raises(TranscodeError):
        render_http_body(cover, b"\xff\xff\xff")


def test_http_body_request_field(bookstore: DescriptorIndex) -> None:
    upload = bookstore.method("bookstore.v1.Bookstore.UploadCover")
    binding = upload.bindings[0]
    assert http_body_field(binding.body, upload.input_descriptor) == "body"
    create = bookstore.method("bookstore.v1.Bookstore.CreateBook")
    assert http_body_field(create.bindings[0].body, create.input_descriptor) is None
    assert http_body_field("*", create.input_descriptor) is None
    message = build_request(binding, {"shelf": "1", "book": "2"}, [], b"")
    fill_http_body(message, "body", "image/png", b"raw bytes")
    assert (message.shelf, message.book, message.body.content_type, message.body.data) == (
        1,
        2,
        "image/png",
        b"raw bytes",
    )
