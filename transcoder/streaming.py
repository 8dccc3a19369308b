"""Framing a streamed gRPC answer for HTTP: newline-delimited JSON, server-sent events, or one JSON array.

- ndjson (grpc-gateway's format): one `{"result": <message>}` per line; a failure midway is a last line
  `{"error": {"code", "message", "details"}}`. Sent as `application/json`, as grpc-gateway does (or
  `application/x-ndjson` when the client asks for exactly that).
- sse: `data: <message>\\n\\n` per message; a failure is `event: error\\ndata: <status>\\n\\n`.
- array (Envoy's non-newline-delimited mode): `[<message>,<message>]`; a failure midway closes the array
  with a last element `{"error": <status>}`, so the body is still valid JSON.

Functions take and return bytes; messages arrive already rendered as JSON (render_response).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from transcoder.status import status_body

__all__ = ["StreamFormat", "StreamFramer", "negotiate_stream_format"]


class StreamFormat(StrEnum):
    NDJSON = "ndjson"
    SSE = "sse"
    ARRAY = "array"


NDJSON_TYPE = "application/x-ndjson"
_CONTENT_TYPES = {
    StreamFormat.NDJSON: "application/json",
    StreamFormat.SSE: "text/event-stream",
    StreamFormat.ARRAY: "application/json",
}


def negotiate_stream_format(accept: str | None, default: StreamFormat) -> tuple[StreamFormat, str]:
    """(format, content type) for a client's Accept header: text/event-stream asks for SSE, else the route's."""
    wanted = {part.split(";", 1)[0].strip().lower() for part in (accept or "").split(",")}
    if "text/event-stream" in wanted:
        return StreamFormat.SSE, _CONTENT_TYPES[StreamFormat.SSE]
    if default == StreamFormat.NDJSON and NDJSON_TYPE in wanted:
        return default, NDJSON_TYPE
    return default, _CONTENT_TYPES[default]


def _status_json(code: int, message: str, details: list[dict[str, Any]] | None) -> bytes:
    return json.dumps(status_body(code, message, details), separators=(",", ":"), ensure_ascii=False).encode()


class StreamFramer:
    """Frames one stream: call `message` per rendered message, then `error` or nothing, then `end`."""

    __slots__ = ("_count", "format")

    def __init__(self, stream_format: StreamFormat) -> None:
        self.format = stream_format
        self._count = 0

    def message(self, rendered: bytes) -> bytes:
        self._count += 1
        if self.format == StreamFormat.NDJSON:
            return b'{"result":' + rendered + b"}\n"
        if self.format == StreamFormat.SSE:
            # JSON written by the transcoder never holds a raw newline, so one data: line is enough.
            return b"data: " + rendered + b"\n\n"
        return (b"[" if self._count == 1 else b",") + rendered

    def error(self, code: int, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
        status = _status_json(code, message, details)
        if self.format == StreamFormat.NDJSON:
            return b'{"error":' + status + b"}\n"
        if self.format == StreamFormat.SSE:
            return b"event: error\ndata: " + status + b"\n\n"
        self._count += 1
        return (b"[" if self._count == 1 else b",") + b'{"error":' + status + b"}"

    def end(self) -> bytes:
        if self.format == StreamFormat.ARRAY:
            return b"[]" if self._count == 0 else b"]"
        return b""
