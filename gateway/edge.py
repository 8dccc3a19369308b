"""The HTTP/1.1 edge: parser refusals with the right status, header and body timeouts, request checks."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from itertools import chain
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.errors import GatewayError, render_http
from transcoder.status import Code, code_from_http_status, status_body

log = logging.getLogger("protogate.edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set by an app whose every request goes to one handler (its only route is a catch-all): that handler with the
# app's middlewares applied. EdgeRunner's connections call it directly, without aiohttp's per-request routing.
EDGE_HANDLER: web.AppKey[Handler] = web.AppKey("edge_handler")

# Control characters other than HTAB, forbidden in field values (RFC 9110 5.5). aiohttp's C parser already
# refuses them; this check keeps the promise if aiohttp runs its pure-Python parser (AIOHTTP_NO_EXTENSIONS).
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message; both of its parsers use it


class EdgeProtocol(web.RequestHandler):
    """aiohttp's connection handler plus nginx's `client_header_timeout` and `client_body_timeout`.

    aiohttp's parser (llhttp, strict for requests) already refuses ambiguous framing: Content-Length
    with Transfer-Encoding, `chunked` not last, bare CR or LF, obs-fold, duplicate Host or
    Content-Length (even equal ones), bad chunk sizes, control characters. It then answers 400 and
    closes. This class picks the status for its size limits (414, 431), writes the google.rpc.Status
    JSON body, and times out heads and bodies that arrive too slowly (408, then close).

    It reads a few of RequestHandler's private fields (`_messages`, `_request_in_progress`, `_upgraded`,
    `_lingering_time`, `_reading_paused`, `_buffer_paused`); tests/integration/test_edge_hardening.py
    pins what they do, so an aiohttp upgrade that changes them fails there first.
    """

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float,
        body_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._edge_loop = loop
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_start = bytearray()  # the current request head up to its first LF (bounded), for 414 vs 431
        self._body: StreamReader | None = None  # the body that is still arriving
        self._body_deadline = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False  # a refusal is under way: ignore whatever else the client sends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = self._edge_loop.call_later(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if data and self._body is None and not self._upgraded:  # after an upgrade, bytes are no HTTP head
            self._head_bytes(data)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            message, payload = self._messages[-1]
            if not isinstance(message, RawRequestMessage):  # a parse error: aiohttp answers it and closes
                self._refused = True
                self._cancel_timers()
                return
            self._head_done()
            self._body = None if payload.is_eof() else payload
        if self._body is not None:
            if self._body.is_eof():
                self._body = None
            else:  # nginx: the timeout runs between two reads, not over the whole body
                self._body_deadline = self._edge_loop.time() + self._body_timeout
                if self._body_timer is None:
                    self._body_timer = self._edge_loop.call_at(self._body_deadline, self._body_timed_out)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):  # a handler's crash or timeout: aiohttp's own answer
            return super().handle_error(request, status, exc, message)
        status, text = self._parse_refusal(exc)
        log.info("refused a malformed request from %s: %d %s", request.remote, status, text)
        response = render_http(GatewayError(status, code_from_http_status(status), text))
        response.force_close()
        return response

    def _parse_refusal(self, exc: HttpProcessingError) -> tuple[int, str]:
        if isinstance(exc, LineTooLong):
            if self._target_too_long():
                return 414, f"request target is longer than {self.max_line_size} bytes"
            return 431, f"a request header is longer than {self.max_field_size} bytes"
        if isinstance(exc, BadHttpMessage) and exc.message == _TOO_MANY_HEADERS:
            return 431, f"more than {self.max_headers} request headers"
        reason = exc.message.split(":\n", 1)[0].strip()  # llhttp's reason, without the echoed request bytes
        return 400, f"malformed HTTP request: {reason[:120]}"

    def _target_too_long(self) -> bool:
        line, newline, _ = bytes(self._head_start).partition(b"\n")
        if not newline:
            return True  # the parser was still in the request line
        parts = line.split(b" ")
        return len(parts) > 1 and len(parts[1]) > self.max_line_size

    def _head_bytes(self, data: bytes) -> None:
        if self._head_timer is None:  # the first byte of a head after an idle keep-alive connection
            self._head_timer = self._edge_loop.call_later(self._header_timeout, self._head_timed_out)
        if b"\n" not in self._head_start:
            self._head_start += data[: self.max_line_size + 64 - len(self._head_start)]

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_start = bytearray()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport is None:
            return
        if self._request_in_progress or self._messages:  # busy with an earlier request: not waiting for this head
            self._head_timer = self._edge_loop.call_later(self._header_timeout, self._head_timed_out)
            return
        self._refused = True
        if self._head_start:  # nothing in flight, so nothing else is writing to the transport
            message = f"request headers were not received within {self._header_timeout:g}s"
            self.transport.write(_raw_response(408, Code.DEADLINE_EXCEEDED, message))
        self.force_close()  # a connection that never sent a byte is closed without an answer, as nginx does

    def _body_timed_out(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            return
        now = self._edge_loop.time()
        if self._reading_paused or self._buffer_paused:  # our own back-pressure, not a slow client
            self._body_deadline = now + self._body_timeout
        if now < self._body_deadline:
            self._body_timer = self._edge_loop.call_at(self._body_deadline, self._body_timed_out)
            return
        self._body = None
        self._refused = True
        if self._request_in_progress:
            # The handler reading this body gets a 408 GatewayError; afterwards aiohttp must not linger
            # reading the rest of a body that stopped arriving, so the connection closes after the answer.
            self._lingering_time = 0.0
            body.set_exception(
                GatewayError(
                    408, Code.DEADLINE_EXCEEDED, f"request body was not received within {self._body_timeout:g}s"
                )
            )
        else:  # the answer was sent already (aiohttp is discarding the rest of the body)
            self.force_close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


def _raw_response(status: int, code: Code, message: str) -> bytes:
    body = json.dumps(status_body(code, message), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class EdgeServer(web.Server):
    """web.Server whose connections are EdgeProtocol (web.Server.__call__ hard-codes RequestHandler)."""

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """web.AppRunner serving through EdgeServer; extra kwargs: header_timeout, body_timeout (seconds)."""

    async def _make_server(self) -> web.Server:
        stock = await super()._make_server()  # runs the app's startup and collects the handler kwargs
        # What start-up built (modules, the config, its runtime) mostly lives as long as the process: moved out
        # of the collector's reach, full collections stop walking it while requests are served. The cost: cycles
        # in the first config, once a reload replaced it, are never collected (refcounting still frees the rest).
        gc.collect()
        gc.freeze()
        return EdgeServer(
            self.app.get(EDGE_HANDLER, stock.request_handler),
            request_factory=stock.request_factory,
            handler_cancellation=stock.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **stock._kwargs,
        )


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what the parser lets through but the gateway will not proxy; drop `_` header names."""
    refusal = check_request(request)
    if refusal is not None:
        log.info("refused a request from %s: %d %s", request.remote, refusal.status, refusal.message)
        response = render_http(refusal)
        response.force_close()  # the framing is not trusted, so the connection is not reused
        return response
    if "_" in "".join(request.headers.keys()):
        # nginx's `underscores_in_headers off` (also APISIX's): `X_Forwarded_For` could alias
        # `X-Forwarded-For` in a CGI-style upstream, so no plugin or upstream ever sees such a name.
        kept = CIMultiDict((name, value) for name, value in request.headers.items() if "_" not in name)
        request = request.clone(headers=kept)
    return await handler(request)


def check_request(request: web.BaseRequest) -> GatewayError | None:
    """The refusal for a parsed request whose version, framing or header bytes the gateway will not take."""
    if request.version not in (HttpVersion10, HttpVersion11):
        version = f"{request.version.major}.{request.version.minor}"
        return GatewayError(505, Code.UNIMPLEMENTED, f"HTTP/{version} is not supported; use HTTP/1.1")
    codings = request.headers.getall("Transfer-Encoding", [])
    if codings:
        if request.version == HttpVersion10:  # RFC 9112 6.1: faulty framing, then close
            return GatewayError.bad_request("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            return GatewayError(501, Code.UNIMPLEMENTED, "only the chunked transfer coding is supported")
    # One search over every name and value (":" is no control character, so joining adds no false hit).
    if _CTL.search(b":".join(chain.from_iterable(request.raw_headers))):
        return GatewayError.bad_request("a request header has a control character")
    return None
