"""Reply (a plugin's non-error answer) and ProxyResponse (what every answer is before it is sent)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import GatewayError, error_body, error_headers


@dataclass
class Reply:
    """A plugin's answer that ends the request without calling the upstream and is not an error.

    A CORS preflight, a redirect or a cached response is a Reply; a refusal raises GatewayError.
    `body` may be bytes, str, or anything JSON-serialisable (sent as application/json).
    """

    status: int = 200
    body: bytes | str | Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_response(self) -> ProxyResponse:
        headers = CIMultiDict(self.headers)
        body = self.body
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        return ProxyResponse(self.status, headers, body)


@dataclass
class ProxyResponse:
    """An answer on its way to the client: the response phases read and change it, the edge sends it.

    Either `body` holds the whole body, or `stream` yields it (a proxied upstream body that is not
    buffered); `close` releases whatever the stream holds. `trailers` are sent as HTTP trailers when
    the client asked for them (`TE: trailers`), else as headers.
    """

    status: int
    headers: CIMultiDict[str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    trailers: list[tuple[str, str]] = field(default_factory=list)
    close: Callable[[], Awaitable[None]] | None = None
    # Who made the answer: "upstream", "plugin" or "gateway" (errors); plugins and the log read it.
    source: str = "upstream"
    # Set when the target already answered on an upgraded connection (WebSocket): nothing to write.
    sent: web.StreamResponse | None = None

    async def read_body(self) -> bytes:
        """Buffer a streamed body (for plugins that must see all of it) and return it."""
        if self.stream is not None:
            chunks = [chunk async for chunk in self.stream]
            self.stream = None
            self.body = b"".join(chunks)
            if self.close is not None:
                await self.close()
                self.close = None
        return self.body

    @classmethod
    def from_error(cls, err: GatewayError) -> ProxyResponse:
        return cls(err.status, CIMultiDict(error_headers(err)), error_body(err), source="gateway")
