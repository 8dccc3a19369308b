"""Sending a ProxyResponse to the client: buffered or streamed body, HTTP trailers on request."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.responses import ProxyResponse

log = logging.getLogger("protogate.writer")


def wants_trailers(request: web.Request) -> bool:
    return request.version >= (1, 1) and "trailers" in request.headers.get("TE", "").lower()


async def send_response(request: web.Request, response: ProxyResponse) -> web.StreamResponse:
    if response.sent is not None:  # answered on an upgraded connection (a WebSocket session)
        return response.sent
    trailers = response.trailers
    use_trailers = bool(trailers) and wants_trailers(request) and response.stream is None
    if response.stream is None and not use_trailers:
        out = web.Response(status=response.status, body=response.body, headers=response.headers)
        # Without `TE: trailers` the client may not read trailers: send trailer metadata as headers.
        for name, value in trailers:
            out.headers.add(name, value)
        # Sent here, not after the handler returns, so the log phase runs once the client has it.
        await out.prepare(request)
        await out.write_eof()
        return out
    out = web.StreamResponse(status=response.status, headers=response.headers)
    if response.stream is not None:
        return await _stream(request, out, response)
    out.headers["Trailer"] = ", ".join(dict.fromkeys(name for name, _ in trailers))
    out.headers.popall("Content-Length", None)
    out.enable_chunked_encoding()
    await out.prepare(request)
    await out.write(response.body)
    # aiohttp has no API for trailers: write the last chunk ourselves, then let it end the body.
    writer = request.writer
    writer.chunked = False  # type: ignore[attr-defined]
    block = "".join(f"{name}: {value}\r\n" for name, value in trailers)
    await writer.write(b"0\r\n" + block.encode("latin-1") + b"\r\n")
    await out.write_eof()
    return out


async def _stream(request: web.Request, out: web.StreamResponse, response: ProxyResponse) -> web.StreamResponse:
    assert response.stream is not None
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        out.content_length = int(length)
    try:
        await out.prepare(request)
        # Once the status line is out, a failure can only cut the connection: no retry, no error body.
        async for chunk in response.stream:
            await out.write(chunk)
        await out.write_eof()
    except Exception as exc:
        log.warning("response to %s %s cut short: %s", request.method, request.path, exc)
        if request.transport is not None:
            request.transport.close()
    finally:
        if response.close is not None:
            await response.close()
    return out
