"""The grpc-transcode route target: HTTP request -> gRPC call of any kind -> JSON (or raw HttpBody) answer.

Streaming, as grpc-gateway does it unless said otherwise:
- server streaming: messages are framed as they arrive (transcoder.streaming: ndjson by default, SSE when the
  client accepts text/event-stream, or a JSON array per route) and written one by one; the next message is
  read only after the previous one was written, so a slow client slows the upstream (gRPC flow control).
  An error before the first message is a plain error answer; after it, the stream's last frame.
- client streaming and bidi over HTTP: the request body is newline-delimited JSON, one request message per
  line, sent upstream as each line arrives. The route's body limit applies per line, not to the stream.
- any streaming method over WebSocket (GET with `Upgrade: websocket`, on the rule's path): one JSON
  message per text frame in, one `{"result": ...}` frame per message out; an empty text frame half-closes
  the request stream; an error is an `{"error": ...}` frame, then close 1011 (upstream) or 1007 (bad input).
- the deadline of a streaming call is the route's `deadline` or the client's Grpc-Timeout, if any; a server
  stream also fails when the upstream sends nothing for the upstream's read timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.errors import GatewayError, to_gateway_error
from gateway.plugins.grpc_transcode import GrpcTranscodeConfig
from gateway.responses import ProxyResponse
from gateway.telemetry import start_upstream_call, trace_metadata, transcode_span
from gateway.upstream.grpc import GrpcUpstream
from gateway.upstream.grpc_calls import call_with_retries
from gateway.upstream.http import IDEMPOTENT_METHODS
from transcoder.descriptors import DescriptorIndex, HttpBinding, MethodInfo
from transcoder.errors import TranscodeError
from transcoder.field_mask import infer_update_mask
from transcoder.httprule import parse_template
from transcoder.matcher import Match, RuleMatcher
from transcoder.metadata import (
    http_status_override,
    parse_grpc_timeout,
    request_metadata,
    response_header_metadata,
    response_trailer_metadata,
)
from transcoder.query_string import parse_query_string
from transcoder.request import RequestOptions, build_request
from transcoder.response import (
    JsonOptions,
    fill_http_body,
    http_body_field,
    render_http_body,
    render_response,
    render_status_details,
    returns_http_body,
)
from transcoder.status import Code, http_status_from_code
from transcoder.streaming import StreamFormat, StreamFramer, negotiate_stream_format

if TYPE_CHECKING:
    from gateway.config.models import Upstream

log = logging.getLogger("protogate.transcode")

_JSON = "application/json"
_OCTETS = "application/octet-stream"
_NO_BODY = frozenset({204, 205, 304})  # statuses an `x-http-code` may ask for that carry no body
Query = Sequence[tuple[str, str]]


class TranscodeTarget:
    """Everything one route needs to transcode, prepared at config load."""

    def __init__(
        self,
        config: GrpcTranscodeConfig,
        index: DescriptorIndex | None,
        upstream: GrpcUpstream,
        *,
        openapi: tuple[str, bytes] | None = None,
    ) -> None:
        self.openapi = openapi  # (path, document) when the route serves its OpenAPI document
        self.upstream = upstream
        # Set by the runtime: the client of an upstream traffic-split chose (ctx.upstream_override).
        self.override: Callable[[Upstream | str], GrpcUpstream] | None = None
        self.timeout = config.deadline or upstream.read_timeout
        self.stream_deadline = config.deadline
        self.stream_format = StreamFormat(config.stream_format)
        self.request_options = RequestOptions(strict_query=config.strict_query, strict_body=config.strict_body)
        opts = config.json_options
        self.json_options = JsonOptions(
            use_proto_names=opts.use_proto_names,
            emit_unpopulated=opts.emit_unpopulated,
            enums_as_ints=opts.enums_as_ints,
        )
        self.config = config
        # None: a reflection source with `required: false` that has not answered yet; requests get 503.
        self.index: DescriptorIndex | None = None
        self.matcher = RuleMatcher.build([])
        self.fixed_method: MethodInfo | None = None
        if index is not None:
            self.swap(index)

    def swap(self, index: DescriptorIndex) -> None:
        """Transcode with `index` from now on (server reflection saw new descriptors).

        Everything is built first; a TranscodeError (the route's service or method is gone) leaves the
        old descriptors in place. The assignments that follow have no await between them, so no request
        on the event loop sees half of the old state and half of the new.
        """
        config = self.config
        methods = _methods_in_scope(index, config)
        fixed: MethodInfo | None = None
        if config.method is not None:
            fixed = index.method(f"{config.service}.{config.method}")
            # APISIX style: the route's uri decides; the body (if any) is the request, then the query.
            template = parse_template(fixed.grpc_path)  # never matched: the route matched already
            with_body = HttpBinding("*", template, "*", "", fixed)
            no_body = HttpBinding("*", template, "", "", fixed)
        bindings: list[HttpBinding] = [b for m in methods for b in m.bindings]
        if config.auto_mapping:
            bindings.extend(
                HttpBinding("POST", parse_template(m.grpc_path), "*", "", m) for m in methods if m.grpc_path
            )
        matcher = RuleMatcher.build(bindings)
        if fixed is not None:
            self._fixed_with_body, self._fixed_no_body = with_body, no_body
        self.index, self.fixed_method, self.matcher = index, fixed, matcher

    def upstream_for(self, ctx: RequestContext) -> GrpcUpstream:
        if ctx.upstream_override is not None and self.override is not None:
            return self.override(ctx.upstream_override)
        return self.upstream

    async def handle(self, ctx: RequestContext) -> ProxyResponse:
        if self.openapi is not None and ctx.method in ("GET", "HEAD") and ctx.path == self.openapi[0]:
            return ProxyResponse(200, CIMultiDict({"Content-Type": _JSON}), self.openapi[1])
        if self.index is None:
            raise GatewayError(
                503, Code.UNAVAILABLE, f"the descriptors of proto {self.config.proto_id!r} are not loaded yet"
            )
        if _is_websocket(ctx):
            return await self._websocket(ctx, self._match_websocket(ctx.path))
        match = self._match(ctx.method, ctx.path)
        method = match.binding.method
        if method.client_streaming:
            return await self._client_stream(ctx, match)
        binding = match.binding
        body = await ctx.read_body() if binding.body or self.fixed_method else b""
        if self.fixed_method is not None:
            binding = self._fixed_with_body if body.strip() else self._fixed_no_body
        with transcode_span(ctx, "transcode request", method.grpc_path):
            payload = self._encode(ctx, binding, match.variables, _query(ctx), body)
        upstream = self.upstream_for(ctx)
        if method.server_streaming:
            node = upstream.pick(ctx)
            start_upstream_call(ctx, "grpc", method.grpc_path, node.address)
            metadata = self._metadata(ctx)
            deadline = self._deadline(ctx, self.stream_deadline)
            call = node.unary_stream(method.grpc_path)(payload, timeout=deadline, metadata=metadata)
            return await self._stream_answer(ctx, binding, _CallReader(call, None, upstream.read_timeout))
        try:
            # Balancing, passive health checks, and UNAVAILABLE retried on another node when safe.
            reply, initial, trailing = await call_with_retries(
                upstream,
                method.grpc_path,
                payload,
                ctx=ctx,
                timeout=self._deadline(ctx, self.timeout),
                metadata=lambda: self._metadata(ctx),
                idempotent=ctx.method in IDEMPOTENT_METHODS,
            )
        except grpc.aio.AioRpcError as err:
            raise self._rpc_error(err) from None
        with transcode_span(ctx, "transcode response", method.grpc_path):
            return self._unary_answer(binding, reply, initial, trailing)

    # -- request side ------------------------------------------------------------------------------------------

    def _encode(
        self, ctx: RequestContext, binding: HttpBinding, variables: dict[str, str], query: Query, body: bytes
    ) -> bytes:
        field = http_body_field(binding.body, binding.method.input_descriptor)
        if field is not None:
            # google.api.HttpBody: the raw body and its Content-Type, never parsed as JSON.
            message = build_request(binding, variables, query, b"", self.request_options)
            fill_http_body(message, field, ctx.headers.get("Content-Type", ""), body)
        else:
            message = build_request(binding, variables, query, body, self.request_options)
            infer_update_mask(binding, message, body)
        return message.SerializeToString()

    def _message_encoder(self, ctx: RequestContext, match: Match) -> Callable[[bytes], bytes]:
        """Encodes one streamed request message (a body line or frame), with the path variables over it."""
        binding = self._fixed_with_body if self.fixed_method is not None else match.binding
        query = _query(ctx)
        return lambda data: self._encode(ctx, binding, match.variables, query, data)

    def _metadata(self, ctx: RequestContext) -> list[tuple[str, str | bytes]]:
        request = ctx.request
        metadata = request_metadata(ctx.headers.items(), peer_ip=request.remote, host=request.host)
        if ctx.upstream_metadata:
            asserted = {key for key, _ in ctx.upstream_metadata}
            metadata = [pair for pair in metadata if pair[0] not in asserted] + ctx.upstream_metadata
        return trace_metadata(ctx, metadata)  # the gateway's trace context replaces the client's, when traced

    def _deadline(self, ctx: RequestContext, timeout: float | None) -> float | None:
        grpc_timeout = ctx.headers.get("Grpc-Timeout")
        if grpc_timeout is not None:
            client = parse_grpc_timeout(grpc_timeout)
            timeout = client if timeout is None else min(timeout, client)
        return timeout

    async def _client_stream(self, ctx: RequestContext, match: Match) -> ProxyResponse:
        method = match.binding.method
        encode = self._message_encoder(ctx, match)
        raw = http_body_field(match.binding.body, method.input_descriptor) is not None
        node = self.upstream_for(ctx).pick(ctx)
        kind = node.stream_stream if method.server_streaming else node.stream_unary
        deadline = self._deadline(ctx, self.stream_deadline)
        call = kind(method.grpc_path)(timeout=deadline, metadata=self._metadata(ctx))
        pump = _Pump(call, _feed_from_body(ctx, call, encode, raw))
        reader = _CallReader(call, pump, None)
        if method.server_streaming:
            return await self._stream_answer(ctx, match.binding, reader)
        try:
            reply = await reader.result()
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            raise self._rpc_error(err) from None
        finally:
            await reader.close()
        return self._unary_answer(match.binding, reply, initial, trailing)

    # -- response side -----------------------------------------------------------------------------------------

    def _unary_answer(self, binding: HttpBinding, reply: bytes, initial: Any, trailing: Any) -> ProxyResponse:
        status, initial = http_status_override(initial or ())
        headers: CIMultiDict[str] = CIMultiDict(response_header_metadata(initial))
        method = binding.method
        if returns_http_body(method, binding.response_body):
            content_type, body = render_http_body(method, reply, binding.response_body)
            headers["Content-Type"] = content_type or _OCTETS
        else:
            headers["Content-Type"] = _JSON
            body = render_response(method, reply, binding.response_body, self.json_options)
        if status in _NO_BODY:
            body = b""  # HTTP forbids a body with these (Go's net/http drops it too)
        trailers = response_trailer_metadata(trailing or ())
        return ProxyResponse(status or 200, headers, body, trailers=trailers)

    async def _stream_answer(self, ctx: RequestContext, binding: HttpBinding, reader: _CallReader) -> ProxyResponse:
        """Waits for the first message (so an early failure is a plain error answer), then streams the rest."""
        try:
            first = await reader.read()
            initial = await reader.call.initial_metadata()
        except grpc.aio.AioRpcError as err:
            await reader.close()
            raise self._rpc_error(err) from None
        except BaseException:
            await reader.close()
            raise
        status, initial = http_status_override(initial or ())
        headers: CIMultiDict[str] = CIMultiDict(response_header_metadata(initial))
        method = binding.method
        stream: AsyncIterator[bytes]
        if returns_http_body(method, binding.response_body):
            content_type, data = render_http_body(method, first, binding.response_body) if first else ("", b"")
            headers["Content-Type"] = content_type or _OCTETS
            stream = self._raw_chunks(reader, binding, data)
        else:
            stream_format, content_type = negotiate_stream_format(ctx.headers.get("Accept"), self.stream_format)
            headers["Content-Type"] = content_type
            if stream_format == StreamFormat.SSE:
                headers["Cache-Control"] = "no-cache"
            stream = self._framed(reader, binding, StreamFramer(stream_format), first)

        async def close() -> None:
            await stream.aclose()  # type: ignore[attr-defined]
            await reader.close()

        if status in _NO_BODY:
            await close()
            return ProxyResponse(status, headers)
        return ProxyResponse(status or 200, headers, stream=stream, close=close)

    async def _framed(
        self, reader: _CallReader, binding: HttpBinding, framer: StreamFramer, first: bytes | None
    ) -> AsyncIterator[bytes]:
        method, response_body = binding.method, binding.response_body
        message = first
        try:
            while message is not None:
                yield framer.message(render_response(method, message, response_body, self.json_options))
                message = await reader.read()
        except grpc.aio.AioRpcError as err:
            failure = self._rpc_error(err)
            yield framer.error(failure.code, failure.message, failure.details)
        except (GatewayError, TranscodeError) as exc:
            failure = to_gateway_error(exc)
            yield framer.error(failure.code, failure.message, failure.details)
        yield framer.end()

    async def _raw_chunks(self, reader: _CallReader, binding: HttpBinding, first: bytes) -> AsyncIterator[bytes]:
        # HttpBody has no place for an error: one midway makes the writer cut the connection.
        if first:
            yield first
        while (message := await reader.read()) is not None:
            _, data = render_http_body(binding.method, message, binding.response_body)
            if data:
                yield data

    # -- WebSocket ---------------------------------------------------------------------------------------------

    def _match_websocket(self, path: str) -> Match:
        # A browser's WebSocket is a GET; the method's rule may say POST (bidi and client streaming always do).
        if self.fixed_method is not None:
            candidates = [Match(self._fixed_with_body, {})]
        else:
            candidates = [m for verb in ("GET", "POST") if (m := self.matcher.match(verb, path)) is not None]
        for match in candidates:
            if match.binding.method.client_streaming or match.binding.method.server_streaming:
                return match
        raise GatewayError.bad_request(f"no streaming gRPC method is bound to {path}: WebSocket needs one")

    async def _websocket(self, ctx: RequestContext, match: Match) -> ProxyResponse:
        request = ctx.request
        ws = web.WebSocketResponse(max_msg_size=ctx.body_limit, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise GatewayError.bad_request("not a valid WebSocket handshake")
        method = match.binding.method
        node = self.upstream_for(ctx).pick(ctx)
        metadata = self._metadata(ctx)
        deadline = self._deadline(ctx, self.stream_deadline)
        encode: Callable[[bytes], bytes] | None = None
        if method.client_streaming:
            kind = node.stream_stream if method.server_streaming else node.stream_unary
            call: Any = kind(method.grpc_path)(timeout=deadline, metadata=metadata)
            encode = self._message_encoder(ctx, match)
        else:  # the request comes from the path and query; frames from the client are ignored
            payload = self._encode(ctx, match.binding, match.variables, _query(ctx), b"")
            call = node.unary_stream(method.grpc_path)(payload, timeout=deadline, metadata=metadata)
        await ws.prepare(request)
        reader = _CallReader(call, _Pump(call, _feed_from_websocket(ws, call, encode)), None)
        framer = StreamFramer(StreamFormat.NDJSON)
        close_code: int | None = WSCloseCode.OK
        # The handshake is sent: from here every failure is a frame and a close code, never an HTTP answer.
        try:
            if method.server_streaming:
                while (message := await reader.read()) is not None:
                    await ws.send_str(self._ws_frame(framer, match.binding, message))
            else:
                await ws.send_str(self._ws_frame(framer, match.binding, await reader.result()))
        except (_ClientClosed, ConnectionError):  # the client went away
            close_code = None
        except grpc.aio.AioRpcError as err:
            close_code = await _send_ws_error(ws, framer, self._rpc_error(err), WSCloseCode.INTERNAL_ERROR)
        except Exception as exc:
            failure = to_gateway_error(exc)
            bad_input = failure.status in (400, 413)
            code = WSCloseCode.INVALID_TEXT if bad_input else WSCloseCode.INTERNAL_ERROR
            close_code = await _send_ws_error(ws, framer, failure, code)
        finally:
            await reader.close()
        if close_code is not None and not ws.closed:
            await ws.close(code=close_code)
        return ProxyResponse(101, CIMultiDict(), sent=ws)

    def _ws_frame(self, framer: StreamFramer, binding: HttpBinding, message: bytes) -> str:
        rendered = render_response(binding.method, message, binding.response_body, self.json_options)
        return framer.message(rendered).rstrip(b"\n").decode()

    # -- matching and errors -----------------------------------------------------------------------------------

    def _match(self, http_method: str, path: str) -> Match:
        if self.fixed_method is not None:
            return Match(self._fixed_no_body, {})
        match = self.matcher.match(http_method, path)
        if match is None:
            allowed = self.matcher.allowed_methods(path)
            if allowed:
                raise GatewayError.method_not_allowed(allowed, f"{http_method} is not allowed on {path}")
            raise GatewayError.not_found(f"no gRPC method is bound to {http_method} {path}")
        return match

    def _rpc_error(self, err: grpc.aio.AioRpcError) -> GatewayError:
        code = Code(err.code().value[0])
        message = err.details() or ""
        details: list[dict] = []
        trailing = err.trailing_metadata() or ()
        for key, value in trailing:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                try:
                    _, detail_message, details = render_status_details(value, self.index.pool)
                    message = detail_message or message
                except TranscodeError as exc:
                    log.warning("upstream sent unreadable grpc-status-details-bin: %s", exc.message)
        if code == Code.UNAVAILABLE and not details:
            message = f"upstream unavailable: {message}"
        headers = dict(response_header_metadata(err.initial_metadata() or ()))
        headers.update(response_trailer_metadata(_without_status(trailing)))
        return GatewayError(http_status_from_code(code), code, message, details=details, headers=headers)


# -- streaming calls ---------------------------------------------------------------------------------------------


class _ClientClosed(Exception):
    """The WebSocket client closed the session before the call ended."""


class _Pump:
    """Feeds a call's request stream from the client in its own task; its first failure cancels the call."""

    def __init__(self, call: Any, feed: Coroutine[Any, Any, None]) -> None:
        self.call = call
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(feed))

    async def _run(self, feed: Coroutine[Any, Any, None]) -> None:
        try:
            await feed
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the call ended first: its reader reports why
        except Exception as exc:
            if type(exc).__module__.startswith("grpc"):
                return  # grpc's own error for a write racing the call's end (the server failed): same as above
            self.error = exc
            self.call.cancel()

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class _CallReader:
    """Reads a call's answers; turns the cancellation the pump (or the idle timer) caused into its reason."""

    def __init__(self, call: Any, pump: _Pump | None, idle_timeout: float | None) -> None:
        self.call = call
        self.pump = pump
        self.idle_timeout = idle_timeout
        self._idle = False

    async def read(self) -> bytes | None:
        """The next message, or None at the end of the stream; raises AioRpcError, GatewayError & co."""
        timer = None
        if self.idle_timeout is not None:
            timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._timed_out)
        try:
            message = await self.call.read()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            self._raise_reason()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return None if message is grpc.aio.EOF else message

    async def result(self) -> bytes:
        try:
            return await self.call
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            self._raise_reason()
            raise

    def _timed_out(self) -> None:
        self._idle = True
        self.call.cancel()

    def _raise_reason(self) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return  # our own task is being cancelled: let that through
        if self.pump is not None and self.pump.error is not None:
            raise self.pump.error
        if self._idle:
            raise GatewayError.gateway_timeout(f"upstream sent nothing for {self.idle_timeout:g}s")

    async def close(self) -> None:
        self.call.cancel()  # a no-op once the call has ended; otherwise the upstream sees CANCELLED
        if self.pump is not None:
            await self.pump.stop()


async def _feed_from_body(ctx: RequestContext, call: Any, encode: Callable[[bytes], bytes], raw: bool) -> None:
    parts = _body_chunks(ctx) if raw else _body_lines(ctx)
    async for part in parts:
        await call.write(encode(part))
    await call.done_writing()


async def _body_lines(ctx: RequestContext) -> AsyncIterator[bytes]:
    """The request body's non-blank lines as they arrive; a line longer than the route's body limit is 413."""
    limit = ctx.body_limit
    if ctx.body_was_read:  # a plugin read it already
        for line in (await ctx.read_body()).split(b"\n"):
            if line.strip():
                yield line
        return
    pending = bytearray()
    async for chunk in _body_chunks(ctx):
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line = bytes(pending[start:end])
            start = end + 1
            if len(line) > limit:
                raise GatewayError.payload_too_large(limit)
            if line.strip():
                yield line
        del pending[:start]
        if len(pending) > limit:
            raise GatewayError.payload_too_large(limit)
    if pending.strip():
        yield bytes(pending)


async def _body_chunks(ctx: RequestContext) -> AsyncIterator[bytes]:
    if ctx.body_was_read:
        body = await ctx.read_body()
        if body:
            yield body
        return
    content = ctx.request.content
    while True:
        try:
            chunk = await content.readany()
        except ConnectionError:
            raise GatewayError.bad_request("the client closed the connection mid-body") from None
        if not chunk:
            return
        yield chunk


async def _feed_from_websocket(ws: web.WebSocketResponse, call: Any, encode: Callable[[bytes], bytes] | None) -> None:
    writing = encode is not None
    async for frame in ws:
        if not writing or frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        data = frame.data.encode() if frame.type == WSMsgType.TEXT else frame.data
        if not data.strip():  # an empty frame: no more request messages (a half-close)
            writing = False
            await call.done_writing()
            continue
        assert encode is not None
        await call.write(encode(data))
    raise _ClientClosed


async def _send_ws_error(
    ws: web.WebSocketResponse, framer: StreamFramer, failure: GatewayError, code: int
) -> int | None:
    try:
        await ws.send_str(framer.error(failure.code, failure.message, failure.details).rstrip(b"\n").decode())
    except ConnectionError:
        return None
    return code


# -- helpers -----------------------------------------------------------------------------------------------------


def _is_websocket(ctx: RequestContext) -> bool:
    headers = ctx.request.headers
    return ctx.method == "GET" and headers.get("Upgrade", "").lower() == "websocket"


def _query(ctx: RequestContext) -> list[tuple[str, str]]:
    return parse_query_string(ctx.query) if ctx.query else []


def _methods_in_scope(index: DescriptorIndex, config: GrpcTranscodeConfig) -> list[MethodInfo]:
    if config.service is not None:
        return index.methods_of(config.service)
    return [m for key, m in index.methods.items() if key.startswith("/")]


def _without_status(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if k not in ("grpc-status-details-bin",)]
