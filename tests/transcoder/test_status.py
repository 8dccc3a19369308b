"""The one gRPC <-> HTTP status table."""

from __future__ import annotations

import pytest

from transcoder.status import Code, code_from_http_status, http_status_from_code, status_body

GRPC_GATEWAY_TABLE = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}


@pytest.mark.parametrize(("code", "status"), GRPC_GATEWAY_TABLE.items())
def test_http_status_matches_grpc_gateway(code: Code, status: int) -> None:
    assert http_status_from_code(code) == status


def test_unknown_codes_are_500() -> None:
    assert http_status_from_code(17) == 500
    assert http_status_from_code(-1) == 500


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, Code.OK),
        (401, Code.UNAUTHENTICATED),
        (429, Code.RESOURCE_EXHAUSTED),
        (502, Code.UNAVAILABLE),
        (504, Code.DEADLINE_EXCEEDED),
        (418, Code.UNKNOWN),
        (599, Code.INTERNAL),
    ],
)
def test_code_from_http_status(status: int, code: Code) -> None:
    assert code_from_http_status(status) == code


def test_status_body_always_has_details() -> None:
    assert status_body(Code.NOT_FOUND, "gone") == {"code": 5, "message": "gone", "details": []}
    assert status_body(3, "bad", [{"@type": "x"}])["details"] == [{"@type": "x"}]
