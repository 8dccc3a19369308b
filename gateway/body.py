"""Reading a request body with the route's size limit (413 before the limit is passed, not after)."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError.payload_too_large(limit)
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise GatewayError.payload_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
