"""response-rewrite: change the status, headers or body of an answer, optionally only when `vars` match."""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.proxy_rewrite import HeaderOps, checked_header_value, header_ops
from gateway.plugins.variables import Expression, Template, compile_expression
from gateway.responses import ProxyResponse

_MATCHED = "response-rewrite.matched"
# A new body makes these describe something that is no longer sent.
_BODY_HEADERS = ("Content-Length", "Content-Encoding", "ETag", "Content-MD5", "Last-Modified")


class ResponseRewriteConfig(PluginConfig):
    status_code: int | None = Field(default=None, ge=200, le=598)
    body: str | None = None
    body_base64: bool = False  # `body` is base64 of the bytes to send
    headers: HeaderOps | None = None
    # lua-resty-expr conditions over the answer and the request, e.g. [["status", "==", 200]].
    vars: list[Any] | None = None

    @field_validator("headers", mode="before")
    @classmethod
    def _flat_headers(cls, value: Any) -> Any:
        return header_ops(value)

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            compile_expression(value)
        return value

    @model_validator(mode="after")
    def _check_body(self) -> ResponseRewriteConfig:
        if self.body_base64:
            if not self.body:
                raise ValueError("body_base64 needs a body")
            try:
                base64.b64decode(self.body, validate=True)
            except binascii.Error:
                raise ValueError("body is not valid base64") from None
        return self


class ResponseRewrite(Plugin[ResponseRewriteConfig]):
    name: ClassVar[str] = "response-rewrite"
    priority: ClassVar[int] = 899
    Config = ResponseRewriteConfig

    def __init__(self, config: ResponseRewriteConfig) -> None:
        super().__init__(config)
        self._vars: Expression | None = compile_expression(config.vars) if config.vars is not None else None
        self._body: bytes | None = None
        if config.body is not None:
            self._body = base64.b64decode(config.body) if config.body_base64 else config.body.encode()
        ops = config.headers
        self._add = [(name, Template.parse(v)) for name, v in ops.add] if ops else []
        self._set = [(name, Template.parse(v)) for name, v in ops.set.items()] if ops else []
        self._remove = list(ops.remove) if ops else []

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        # `vars` see the answer as it arrived here (its status before ours), once: body_filter reuses the verdict.
        matched = self._vars is None or self._vars.matches(ctx, response)
        ctx.vars[_MATCHED] = matched
        if not matched:
            return
        # Values are rendered against the answer before any of these changes touch it.
        added = [(name, checked_header_value(name, t.render(ctx, response))) for name, t in self._add]
        replaced = [(name, checked_header_value(name, t.render(ctx, response))) for name, t in self._set]
        if self.config.status_code is not None:
            response.status = self.config.status_code
        if self._body is not None:
            for name in _BODY_HEADERS:
                response.headers.popall(name, None)
        for name, value in added:
            response.headers.add(name, value)
        for name, value in replaced:
            response.headers[name] = value
        for name in self._remove:
            response.headers.popall(name, None)

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if self._body is None or not ctx.vars.get(_MATCHED):
            return
        # The upstream body is dropped unread rather than buffered: it is replaced whole.
        if response.stream is not None:
            response.stream = None
            if response.close is not None:
                await response.close()
                response.close = None
        response.body = self._body
