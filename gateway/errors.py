"""GatewayError, the one refusal type of the pipeline; to_gateway_error() and render_http()."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import ClientConnectionError, ClientError, ClientPayloadError, ServerTimeoutError, web

from transcoder.errors import TranscodeError
from transcoder.status import Code, http_status_from_code, status_body

log = logging.getLogger("protogate.errors")


class GatewayError(Exception):
    """A refusal inside the pipeline: an HTTP status, the gRPC code that says why, a message.

    Raise it from any phase; the edge turns it into a google.rpc.Status-shaped JSON answer
    (`{"code": 3, "message": "...", "details": []}`) in one place, `render_http`.
    """

    def __init__(
        self,
        status: int,
        code: Code,
        message: str,
        *,
        details: Sequence[dict[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    @classmethod
    def from_code(cls, code: Code, message: str, **kwargs: Any) -> GatewayError:
        return cls(http_status_from_code(code), code, message, **kwargs)

    @classmethod
    def bad_request(cls, message: str) -> GatewayError:
        return cls(400, Code.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str = "Not Found") -> GatewayError:
        return cls(404, Code.NOT_FOUND, message)

    @classmethod
    def method_not_allowed(cls, allowed: Sequence[str], message: str = "Method Not Allowed") -> GatewayError:
        return cls(405, Code.UNIMPLEMENTED, message, headers={"Allow": ", ".join(allowed)})

    @classmethod
    def payload_too_large(cls, limit: int) -> GatewayError:
        return cls(413, Code.OUT_OF_RANGE, f"request body is larger than the limit of {limit} bytes")

    @classmethod
    def bad_gateway(cls, message: str) -> GatewayError:
        return cls(502, Code.UNAVAILABLE, message)

    @classmethod
    def unavailable(cls, message: str) -> GatewayError:
        return cls(503, Code.UNAVAILABLE, message)

    @classmethod
    def gateway_timeout(cls, message: str) -> GatewayError:
        return cls(504, Code.DEADLINE_EXCEEDED, message)

    @classmethod
    def internal(cls, message: str = "Internal Server Error") -> GatewayError:
        return cls(500, Code.INTERNAL, message)

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code.name}, {self.message!r})"


def to_gateway_error(exc: BaseException) -> GatewayError:
    """Normalise a foreign exception into a GatewayError; the single table of such mappings."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TranscodeError):
        return GatewayError(exc.http_status, exc.code, exc.message)
    if isinstance(exc, ServerTimeoutError | TimeoutError):
        return GatewayError.gateway_timeout("upstream timed out")
    if isinstance(exc, ClientPayloadError):
        return GatewayError.bad_gateway("upstream sent a broken response body")
    if isinstance(exc, ClientConnectionError):
        # The detail names internal addresses: it goes to the log, not to the client.
        log.warning("upstream connection failed: %s", exc)
        return GatewayError.bad_gateway("upstream connection failed")
    if isinstance(exc, ClientError):
        return GatewayError.bad_gateway(f"upstream request failed: {type(exc).__name__}")
    log.error("unexpected error in the request path", exc_info=exc)
    return GatewayError.internal()


def error_body(err: GatewayError) -> bytes:
    """The google.rpc.Status JSON of a refusal; `message` also satisfies APISIX-style clients."""
    body = status_body(err.code, err.message, err.details)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def error_headers(err: GatewayError) -> dict[str, str]:
    headers = {**err.headers, "Content-Type": "application/json"}
    if err.code == Code.UNAUTHENTICATED and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = 'Bearer realm="protogate"'
    return headers


def render_http(err: GatewayError) -> web.Response:
    """A refusal made outside the pipeline (the edge's parser limits, aiohttp's own errors)."""
    return web.Response(status=err.status, body=error_body(err), headers=error_headers(err))
