"""GatewayError, the foreign-error table, and the one HTTP renderer."""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.errors import GatewayError, render_http, to_gateway_error
from transcoder.errors import TranscodeError
from transcoder.status import Code


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (TranscodeError(Code.INVALID_ARGUMENT, "bad"), 400, Code.INVALID_ARGUMENT),
        (TranscodeError(Code.NOT_FOUND, "gone"), 404, Code.NOT_FOUND),
        (TimeoutError(), 504, Code.DEADLINE_EXCEEDED),
        (aiohttp.ServerTimeoutError(), 504, Code.DEADLINE_EXCEEDED),
        (aiohttp.ClientPayloadError(), 502, Code.UNAVAILABLE),
        (aiohttp.ServerDisconnectedError(), 502, Code.UNAVAILABLE),
        (aiohttp.ClientResponseError(None, (), status=500), 502, Code.UNAVAILABLE),  # type: ignore[arg-type]
    ],
)
def test_foreign_errors_map_through_one_table(exc: BaseException, status: int, code: Code) -> None:
    err = to_gateway_error(exc)
    assert (err.status, err.code) == (status, code)


def test_unknown_errors_are_500_and_never_echoed(caplog: pytest.LogCaptureFixture) -> None:
    err = to_gateway_error(RuntimeError("secret internals"))
    assert (err.status, err.code) == (500, Code.INTERNAL)
    assert "secret" not in err.message
    assert "secret internals" in caplog.text  # logged for the operator


def test_gateway_errors_pass_through_unchanged() -> None:
    err = GatewayError.payload_too_large(10)
    assert to_gateway_error(err) is err


def test_render_http_writes_google_rpc_status_json() -> None:
    response = render_http(GatewayError.method_not_allowed(["GET", "POST"]))
    assert response.status == 405
    assert response.headers["Allow"] == "GET, POST"
    assert response.content_type == "application/json"
    assert response.body is not None
    assert json.loads(response.body) == {"code": 12, "message": "Method Not Allowed", "details": []}


def test_unauthenticated_answers_carry_www_authenticate() -> None:
    response = render_http(GatewayError.from_code(Code.UNAUTHENTICATED, "who are you"))
    assert response.status == 401
    assert "WWW-Authenticate" in response.headers
