"""gRPC-Web on the HTTP edge: a gRPC-Web request proxied as a raw gRPC call, the answer framed back.

A route whose upstream has scheme grpc takes `application/grpc-web[+proto]` and
`application/grpc-web-text[+proto]` (base64) requests at `POST /pkg.Service/Method`; a grpc-transcode
route takes them too, beside JSON. Messages pass as bytes, never decoded. The answer is HTTP 200 with
the upstream's initial metadata as headers and, in the body, one data frame per message and a last
trailer frame (`grpc-status`, `grpc-message` percent-encoded, the trailing metadata). An answer with
no message (a trailers-only error) also carries `grpc-status` and `grpc-message` as headers.

Browsers across origins read those headers only when they are exposed: with the cors plugin, list
them in `expose_headers`, and allow the headers gRPC-Web clients send:

    cors:
      allow_origins: https://app.example.com
      allow_methods: POST,OPTIONS
      allow_headers: content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,apikey
      expose_headers: grpc-status,grpc-message,grpc-status-details-bin

Without the cors plugin, gRPC-Web answers carry `Access-Control-Expose-Headers` with those names.
gRPC-Web has no client streaming: a request body with more than one message is refused (UNIMPLEMENTED).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import grpc
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.grpc_context import GRPC_METHOD, Metadata, passed_metadata, unavailable_details, upstream_metadata
from gateway.responses import ProxyResponse
from gateway.upstream.grpc import GrpcUpstream
from transcoder.errors import TranscodeError
from transcoder.metadata import parse_grpc_timeout
from transcoder.status import Code, code_from_http_status

if TYPE_CHECKING:
    from gateway.runtime import RouteTarget

GRPC_WEB = "application/grpc-web"
GRPC_WEB_TEXT = "application/grpc-web-text"
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
DATA_FRAME = 0x00
TRAILER_FRAME = 0x80
_COMPRESSED = 0x01
_HEADER = 5  # flag byte + 4-byte big-endian length
_PRINTABLE = frozenset(range(0x20, 0x7F))


def is_grpc_web(content_type: str | None) -> bool:
    return bool(content_type) and content_type.strip().lower().startswith(GRPC_WEB)  # type: ignore[union-attr]


def _is_text(content_type: str | None) -> bool:
    return (content_type or "").strip().lower().startswith(GRPC_WEB_TEXT)


def _is_proto(content_type: str | None) -> bool:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base in (GRPC_WEB, GRPC_WEB + "+proto", GRPC_WEB_TEXT, GRPC_WEB_TEXT + "+proto")


def pack_frame(flag: int, payload: bytes) -> bytes:
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


def unpack_frames(body: bytes) -> list[tuple[int, bytes]]:
    """A request body's frames as (flag, payload); INVALID_ARGUMENT if the last one is cut short."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < _HEADER:
            raise GatewayError(400, Code.INVALID_ARGUMENT, "truncated gRPC-Web frame header")
        flag = body[pos]
        length = int.from_bytes(body[pos + 1 : pos + _HEADER], "big")
        pos += _HEADER
        if len(body) - pos < length:
            raise GatewayError(400, Code.INVALID_ARGUMENT, "truncated gRPC-Web frame")
        frames.append((flag, body[pos : pos + length]))
        pos += length
    return frames


def decode_text(body: bytes) -> bytes:
    """A grpc-web-text body: base64, possibly several padded chunks one after another."""
    data = body.translate(None, b" \t\r\n")
    out: list[bytes] = []
    start = 0
    while start < len(data):
        pad = data.find(b"=", start)
        end = len(data) if pad < 0 else pad + 1
        if end < len(data) and data[end] == ord("="):
            end += 1
        try:
            out.append(base64.b64decode(data[start:end], validate=True))
        except (binascii.Error, ValueError):
            raise GatewayError(400, Code.INVALID_ARGUMENT, "gRPC-Web text body is not base64") from None
        start = end
    return b"".join(out)


def percent_encode(message: str) -> str:
    """grpc-message encoding: UTF-8, then every byte outside printable ASCII, and "%", as %XX."""
    return "".join(chr(b) if b in _PRINTABLE and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8"))


def metadata_pairs(metadata: Metadata | None) -> list[tuple[str, str]]:
    """Metadata as header text: binary values base64, anything that could split a header dropped."""
    pairs: list[tuple[str, str]] = []
    for key, value in passed_metadata(metadata):
        if isinstance(value, bytes):
            if not key.endswith("-bin"):
                continue
            pairs.append((key, base64.b64encode(value).decode("ascii")))
        elif all(ord(ch) in _PRINTABLE for ch in value):
            pairs.append((key, value))
    return pairs


def trailer_block(code: int, message: str, trailing: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"grpc-status: {code}"]
    if message:
        lines.append(f"grpc-message: {percent_encode(message)}")
    lines.extend(f"{key}: {value}" for key, value in trailing)
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def _encoder(text: bool) -> Callable[[bytes], bytes]:
    # Each flush is whole frames, base64-padded on its own: gRPC-Web clients decode chunk by chunk.
    return base64.b64encode if text else bytes


def _answer_headers(text: bool, pairs: Iterable[tuple[str, str]] = ()) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    headers["Content-Type"] = GRPC_WEB_TEXT + "+proto" if text else GRPC_WEB + "+proto"
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return headers


def status_answer(
    code: int, message: str, *, text: bool, headers: Mapping[str, str] | None = None, trailing: Metadata | None = None
) -> ProxyResponse:
    """A gRPC-Web answer with no message: the status both in the headers and in a trailer frame."""
    pairs = metadata_pairs(trailing)
    out = _answer_headers(text, [(k, v) for k, v in (headers or {}).items() if k.lower() != "content-type"])
    out["grpc-status"] = str(code)
    if message:
        out["grpc-message"] = percent_encode(message)
    for key, value in pairs:
        out.add(key, value)
    body = _encoder(text)(pack_frame(TRAILER_FRAME, trailer_block(code, message, pairs)))
    return ProxyResponse(200, out, body)


def as_grpc_web(request_content_type: str | None, response: ProxyResponse) -> ProxyResponse:
    """A refusal the gateway or a plugin made for a gRPC-Web request, re-sent as a gRPC-Web status.

    The JSON google.rpc.Status body gives the code and message; the headers (Retry-After, CORS, ...)
    stay. Upstream answers and non-errors pass unchanged.
    """
    if (
        not is_grpc_web(request_content_type)
        or response.status < 400
        or response.source not in ("gateway", "plugin")
        or response.stream is not None
        or is_grpc_web(response.headers.get("Content-Type"))
    ):
        return response
    code, message = int(code_from_http_status(response.status)), ""
    try:
        parsed = json.loads(response.body) if response.body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        code = parsed["code"] if isinstance(parsed.get("code"), int) and 0 < parsed["code"] <= 16 else code
        message = str(parsed.get("message") or parsed.get("error_msg") or "")
    elif response.body:
        message = response.body.decode("utf-8", "replace").strip()[:1024]
    kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "www-authenticate")}
    answer = status_answer(code, message, text=_is_text(request_content_type), headers=kept)
    answer.source = response.source
    return answer


class GrpcWebTarget:
    """A gRPC-Web request to a gRPC upstream: one message in, the method's messages out as they arrive."""

    def __init__(self, upstream: GrpcUpstream) -> None:
        self.upstream = upstream

    async def handle(self, ctx: RequestContext) -> ProxyResponse:
        content_type = ctx.headers.get("Content-Type")
        text = _is_text(content_type)
        if not is_grpc_web(content_type):
            raise GatewayError(415, Code.INVALID_ARGUMENT, f"this route takes gRPC-Web requests ({GRPC_WEB}[-text])")
        try:
            call, address = await self._start(ctx, content_type)
        except GatewayError as err:
            return status_answer(int(err.code), err.message, text=text, headers=err.headers)
        return await self._answer(call, address, text)

    async def _start(self, ctx: RequestContext, content_type: str | None) -> tuple[grpc.aio.UnaryStreamCall, str]:
        if ctx.method != "POST":
            raise GatewayError(405, Code.UNIMPLEMENTED, "gRPC-Web calls are POST requests", headers={"Allow": "POST"})
        if not _is_proto(content_type):
            raise GatewayError(415, Code.UNIMPLEMENTED, f"only protobuf gRPC-Web is proxied, not {content_type}")
        if not GRPC_METHOD.fullmatch(ctx.path):
            raise GatewayError(404, Code.UNIMPLEMENTED, f"{ctx.path} is not a gRPC method path (/pkg.Service/Method)")
        body = await ctx.read_body()
        frames = unpack_frames(decode_text(body) if _is_text(content_type) else body)
        messages = [payload for flag, payload in frames if flag == DATA_FRAME]
        if len(messages) != len(frames):
            flags = {flag for flag, _ in frames} - {DATA_FRAME}
            if flags & {_COMPRESSED}:
                raise GatewayError(400, Code.UNIMPLEMENTED, "compressed gRPC-Web messages are not supported")
            raise GatewayError(400, Code.INVALID_ARGUMENT, "a gRPC-Web request carries only message frames")
        if len(messages) > 1:
            raise GatewayError(400, Code.UNIMPLEMENTED, "gRPC-Web has no client streaming: send one message")
        if not messages:
            raise GatewayError(400, Code.INVALID_ARGUMENT, "the gRPC-Web request has no message")
        timeout = self.upstream.read_timeout
        grpc_timeout = ctx.headers.get("Grpc-Timeout")
        if grpc_timeout is not None:
            try:
                timeout = parse_grpc_timeout(grpc_timeout.strip())
            except TranscodeError as exc:
                raise GatewayError(400, exc.code, exc.message) from None
        metadata = upstream_metadata(ctx.headers, ctx.upstream_metadata, ctx.client_ip)
        node = self.upstream.pick(ctx)
        # unary_stream serves unary and server-streaming methods alike (one message in, any number out).
        call = node.channel.unary_stream(ctx.path)(messages[0], timeout=timeout, metadata=metadata)
        return call, node.address

    async def _answer(self, call: grpc.aio.UnaryStreamCall, address: str, text: bool) -> ProxyResponse:
        initial: Metadata | None = None
        try:
            initial = await call.initial_metadata()
            # The first message (or the end) decides the shape: with none, the status goes in the headers too.
            first = await call.read()
        except grpc.aio.AioRpcError:
            first = grpc.aio.EOF
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            code, details, trailing = await _status(call, address)
            return status_answer(
                code, details, text=text, headers=_answer_headers(text, metadata_pairs(initial)), trailing=trailing
            )
        assert isinstance(first, bytes)
        return ProxyResponse(
            200,
            _answer_headers(text, metadata_pairs(initial)),
            stream=_frames(call, first, address, text),
            close=_closer(call),
        )


class GrpcWebSwitch:
    """A grpc-transcode route that also takes gRPC-Web: the request's content type picks the target."""

    def __init__(self, grpc_web: GrpcWebTarget, other: RouteTarget) -> None:
        self.grpc_web = grpc_web
        self.other = other
        self.upstream = grpc_web.upstream

    async def handle(self, ctx: RequestContext) -> ProxyResponse:
        if is_grpc_web(ctx.headers.get("Content-Type")):
            return await self.grpc_web.handle(ctx)
        return await self.other.handle(ctx)


async def _frames(call: grpc.aio.UnaryStreamCall, first: bytes, address: str, text: bool) -> AsyncIterator[bytes]:
    encode = _encoder(text)
    yield encode(pack_frame(DATA_FRAME, first))
    try:
        # The writer pulls the next message only once the client took the last one (back-pressure).
        while (message := await call.read()) is not grpc.aio.EOF:
            assert isinstance(message, bytes)
            yield encode(pack_frame(DATA_FRAME, message))
    except grpc.aio.AioRpcError:
        pass  # the status is read from the call below
    code, details, trailing = await _status(call, address)
    yield encode(pack_frame(TRAILER_FRAME, trailer_block(code, details, metadata_pairs(trailing))))


async def _status(call: grpc.aio.UnaryStreamCall, address: str) -> tuple[int, str, Metadata | None]:
    code = await call.code()
    details = unavailable_details(code, await call.details() or "", address)
    return code.value[0], details, await call.trailing_metadata()


def _closer(call: grpc.aio.UnaryStreamCall) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if not call.done():
            call.cancel()  # the client went away mid-stream: the upstream stops too

    return close
