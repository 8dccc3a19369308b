"""gRPC status codes, the gRPC-to-HTTP status table, and the google.rpc.Status JSON shape."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    """Canonical gRPC status codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1  #: the caller cancelled
    UNKNOWN = 2
    INVALID_ARGUMENT = 3  #: the request itself is wrong, whatever the server's state
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The same table as grpc-gateway's runtime.HTTPStatusFromCode; the only status table in protogate.
_HTTP_STATUS: dict[int, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# HTTP status -> gRPC code for answers that start as HTTP (a plain HTTP upstream, a gateway refusal),
# as the gRPC HTTP/2 spec and Envoy map them.
_CODE_FROM_HTTP: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    408: Code.DEADLINE_EXCEEDED,
    409: Code.ABORTED,
    412: Code.FAILED_PRECONDITION,
    413: Code.OUT_OF_RANGE,
    414: Code.OUT_OF_RANGE,
    415: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    431: Code.OUT_OF_RANGE,
    499: Code.CANCELLED,
    501: Code.UNIMPLEMENTED,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def http_status_from_code(code: int) -> int:
    """The HTTP status grpc-gateway answers for a gRPC code; unknown codes are 500."""
    return _HTTP_STATUS.get(code, 500)


def code_from_http_status(status: int) -> Code:
    """The gRPC code that best describes an HTTP status (for gRPC clients of HTTP answers)."""
    if status < 400:
        return Code.OK
    return _CODE_FROM_HTTP.get(status, Code.INTERNAL if status >= 500 else Code.UNKNOWN)


def status_body(code: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The google.rpc.Status JSON object; `details` is always present, as grpc-gateway writes it."""
    return {"code": int(code), "message": message, "details": details if details is not None else []}
