"""Request-level edge checks: versions, transfer codings, control bytes, `_` header names (THREATS 6, 10, 11)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion
from aiohttp.test_utils import make_mocked_request
from aiohttp.typedefs import LooseHeaders

from gateway.edge import check_request, edge_middleware

HTTP11 = HttpVersion(1, 1)


def mocked(headers: LooseHeaders | None = None, version: HttpVersion = HTTP11) -> web.Request:
    return make_mocked_request("POST", "/v1/shelves", headers=headers, version=version)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Transfer-Encoding": "chunked"},
        {"Transfer-Encoding": "Chunked "},
        {"X-A": "tab\tinside"},
        {"X_Underscore": "dropped elsewhere, not refused"},
    ],
)
def test_check_request_accepts(headers: dict[str, str]) -> None:
    assert check_request(mocked(headers)) is None


@pytest.mark.parametrize(
    ("headers", "version", "status"),
    [
        ({}, HttpVersion(2, 0), 505),
        ({}, HttpVersion(0, 9), 505),
        ({"Transfer-Encoding": "chunked"}, HttpVersion(1, 0), 400),
        ({"Transfer-Encoding": "gzip, chunked"}, HttpVersion(1, 1), 501),
        ({"Transfer-Encoding": "identity"}, HttpVersion(1, 1), 501),
        ({"X-A": "a\x00b"}, HttpVersion(1, 1), 400),
        ({"X-A": "a\x1bb"}, HttpVersion(1, 1), 400),
        ({"X-A": "a\rb"}, HttpVersion(1, 1), 400),
        ({"X-A": "a\x7f"}, HttpVersion(1, 1), 400),
        ({"X\x01A": "1"}, HttpVersion(1, 1), 400),
    ],
)
def test_check_request_refuses(headers: dict[str, str], version: HttpVersion, status: int) -> None:
    # aiohttp's C parser refuses the control bytes itself; this is the check for its pure-Python parser.
    refusal = check_request(mocked(headers, version))
    assert refusal is not None and refusal.status == status and refusal.message


async def echo_headers(request: web.Request) -> web.Response:
    names = [name.decode() for name, _ in request.raw_headers]
    return web.json_response({"headers": dict(request.headers), "raw": names})


async def test_underscore_headers_are_dropped_before_handlers(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    app = web.Application(middlewares=[edge_middleware])
    app.router.add_get("/", echo_headers)
    client = await aiohttp_client(app)
    headers = {"X_Forwarded_For": "6.6.6.6", "Grpc_Metadata_Tenant": "evil", "X-Forwarded-For": "1.2.3.4"}
    response = await client.get("/", headers=headers)
    assert response.status == 200
    seen = await response.json()
    assert seen["headers"]["X-Forwarded-For"] == "1.2.3.4"
    assert not any("_" in name for name in [*seen["headers"], *seen["raw"]]), seen


async def test_refusal_is_json_and_closes() -> None:
    async def never(request: web.Request) -> web.StreamResponse:
        raise AssertionError("a refused request reached the handler")

    response = await edge_middleware(mocked({}, HttpVersion(2, 0)), never)
    assert isinstance(response, web.Response) and response.status == 505
    assert response.body == b'{"code":12,"message":"HTTP/2.0 is not supported; use HTTP/1.1","details":[]}'
    assert response.keep_alive is False
