"""The protocol's error contract: status codes and google.rpc details, built by runners and read by clients."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

__all__ = [
    "DETAILS_KEY",
    "ERROR_DOMAIN",
    "TOKEN_UNKNOWN",
    "TOKEN_UNKNOWN_CODE",
    "bad_request_metadata",
    "error_reason",
    "field_violations",
    "token_unknown_metadata",
]

#: The status code of a call whose token the runner does not hold; used for nothing else on call RPCs.
TOKEN_UNKNOWN_CODE = grpc.StatusCode.FAILED_PRECONDITION
#: google.rpc.ErrorInfo.reason attached to that status.
TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
ERROR_DOMAIN = "plugin.protogate.dev"
#: Trailing-metadata key carrying a serialized google.rpc.Status (the standard rich-error channel).
DETAILS_KEY = "grpc-status-details-bin"


def _status_metadata(code: int, message: str, details: Sequence[object]) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return ((DETAILS_KEY, status.SerializeToString()),)


def token_unknown_metadata(token: str, epoch: str) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.ErrorInfo(reason=TOKEN_UNKNOWN, domain=ERROR_DOMAIN, metadata={"epoch": epoch})
    return _status_metadata(code_pb2.FAILED_PRECONDITION, f"{TOKEN_UNKNOWN}: token {token!r} is not prepared", [info])


def bad_request_metadata(message: str, violations: Sequence[tuple[str, str]]) -> tuple[tuple[str, bytes], ...]:
    request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=path, description=text) for path, text in violations
        ]
    )
    return _status_metadata(code_pb2.INVALID_ARGUMENT, message, [request])


def _details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:
                return None
            return status
    return None


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of a failed call, or None."""
    status = _details(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """(field path, description) pairs of a BadRequest detail; empty when the runner sent none."""
    status = _details(error)
    for detail in status.details if status else ():
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            return [(violation.field, violation.description) for violation in request.field_violations]
    return []
