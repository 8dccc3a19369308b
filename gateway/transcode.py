"""The grpc-transcode route target: HTTP request -> unary gRPC call -> JSON answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import parse_qsl

import grpc
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.grpc_transcode import GrpcTranscodeConfig
from gateway.responses import ProxyResponse
from gateway.upstream.grpc import GrpcUpstream
from transcoder.descriptors import DescriptorIndex, HttpBinding, MethodInfo
from transcoder.errors import TranscodeError
from transcoder.httprule import parse_template
from transcoder.matcher import Match, RuleMatcher
from transcoder.metadata import (
    parse_grpc_timeout,
    request_metadata,
    response_header_metadata,
    response_trailer_metadata,
)
from transcoder.request import RequestOptions, encode_request
from transcoder.response import JsonOptions, render_response, render_status_details
from transcoder.status import Code, http_status_from_code

log = logging.getLogger("protogate.transcode")

_JSON = "application/json"


class TranscodeTarget:
    """Everything one route needs to transcode, prepared at config load."""

    def __init__(self, config: GrpcTranscodeConfig, index: DescriptorIndex, upstream: GrpcUpstream) -> None:
        self.index = index
        self.upstream = upstream
        self.timeout = config.deadline or upstream.read_timeout
        self.request_options = RequestOptions(strict_query=config.strict_query, strict_body=config.strict_body)
        opts = config.json_options
        self.json_options = JsonOptions(
            use_proto_names=opts.use_proto_names,
            emit_unpopulated=opts.emit_unpopulated,
            enums_as_ints=opts.enums_as_ints,
        )
        methods = _methods_in_scope(index, config)
        self.fixed_method: MethodInfo | None = None
        if config.method is not None:
            self.fixed_method = index.method(f"{config.service}.{config.method}")
            # APISIX style: the route's uri decides; the body (if any) is the request, then the query.
            template = parse_template(self.fixed_method.grpc_path)  # never matched: the route matched already
            self._fixed_with_body = HttpBinding("*", template, "*", "", self.fixed_method)
            self._fixed_no_body = HttpBinding("*", template, "", "", self.fixed_method)
        bindings: list[HttpBinding] = [b for m in methods for b in m.bindings]
        if config.auto_mapping:
            bindings.extend(
                HttpBinding("POST", parse_template(m.grpc_path), "*", "", m) for m in methods if m.grpc_path
            )
        self.matcher = RuleMatcher.build(bindings)

    async def handle(self, ctx: RequestContext) -> ProxyResponse:
        request = ctx.request
        match = self._match(ctx.method, ctx.path)
        binding = match.binding
        method = binding.method
        if method.client_streaming or method.server_streaming:
            raise GatewayError(501, Code.UNIMPLEMENTED, f"{method.full_name} is a streaming method")
        body = await ctx.read_body() if binding.body or self.fixed_method else b""
        if self.fixed_method is not None:
            binding = self._fixed_with_body if body.strip() else self._fixed_no_body
        query = parse_qsl(ctx.query, keep_blank_values=True) if ctx.query else []
        payload = encode_request(binding, match.variables, query, body, self.request_options)
        metadata = request_metadata(ctx.headers.items(), peer_ip=request.remote, host=request.host)
        if ctx.upstream_metadata:
            asserted = {key for key, _ in ctx.upstream_metadata}
            metadata = [pair for pair in metadata if pair[0] not in asserted] + ctx.upstream_metadata
        timeout = self.timeout
        grpc_timeout = ctx.headers.get("Grpc-Timeout")
        if grpc_timeout is not None:
            timeout = min(timeout, parse_grpc_timeout(grpc_timeout))
        node = self.upstream.pick()
        call = node.unary(method.grpc_path)(payload, timeout=timeout, metadata=metadata)
        try:
            reply = await call
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            raise self._rpc_error(err) from None
        headers: CIMultiDict[str] = CIMultiDict(response_header_metadata(initial or ()))
        headers["Content-Type"] = _JSON
        return ProxyResponse(
            200,
            headers,
            render_response(method, reply, binding.response_body, self.json_options),
            trailers=response_trailer_metadata(trailing or ()),
        )

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


def _methods_in_scope(index: DescriptorIndex, config: GrpcTranscodeConfig) -> list[MethodInfo]:
    if config.service is not None:
        return index.methods_of(config.service)
    return [m for key, m in index.methods.items() if key.startswith("/")]


def _without_status(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if k not in ("grpc-status-details-bin",)]
