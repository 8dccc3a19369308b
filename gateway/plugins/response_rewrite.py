"""response-rewrite: change the status, headers or body of an answer, optionally only when `vars` match."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import zlib
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.proxy_rewrite import HeaderOps, checked_header_value, expand_groups, header_ops
from gateway.plugins.variables import Expression, Template, compile_expression
from gateway.responses import ProxyResponse

log = logging.getLogger("protogate.plugins.response_rewrite")

_MATCHED = "response-rewrite.matched"
# A new body makes these describe something that is no longer sent.
_BODY_HEADERS = ("Content-Length", "Content-Encoding", "ETag", "Content-MD5", "Last-Modified")
# ngx.re options that change what a pattern matches; the others (j, o, u, D, J) only tune PCRE.
_RE_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_RE_OPTIONS = frozenset("ijmosxuaDJ")


class Filter(PluginConfig):
    """One regex substitution on the answer's body (APISIX's `filters` item)."""

    regex: str = Field(min_length=1)
    replace: str
    scope: Literal["once", "global"] = "once"
    options: str = "jo"  # ngx.re options: i, m, s, x change the match; a anchors it at the start

    @model_validator(mode="after")
    def _compiles(self) -> Filter:
        compile_filter(self)
        return self


def compile_filter(item: Filter) -> re.Pattern[str]:
    unknown = set(item.options) - _RE_OPTIONS
    if unknown:
        raise ValueError(f"unknown regex option(s) {''.join(sorted(unknown))!r} in {item.options!r}")
    flags = 0
    for option in item.options:
        flags |= _RE_FLAGS.get(option, 0)
    pattern = item.regex if "a" not in item.options else rf"\A(?:{item.regex})"
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f'regex "{item.regex}" validation failed: {exc}') from None


class ResponseRewriteConfig(PluginConfig):
    status_code: int | None = Field(default=None, ge=200, le=598)
    body: str | None = None
    body_base64: bool = False  # `body` is base64 of the bytes to send
    headers: HeaderOps | None = None
    # lua-resty-expr conditions over the answer and the request, e.g. [["status", "==", 200]].
    vars: list[Any] | None = None
    # Regex substitutions on the upstream's body, in order; not with `body`.
    filters: list[Filter] | None = Field(default=None, min_length=1)
    # Bodies larger than this are passed on unfiltered (APISIX truncates them; a cut body is worse).
    max_resp_body_size: int = Field(default=64 * 1024 * 1024, ge=1)

    @field_validator("headers", mode="before")
    @classmethod
    def _flat_headers(cls, value: Any) -> Any:
        return header_ops(value)

    @field_validator("headers")
    @classmethod
    def _single_values(cls, value: HeaderOps | None) -> HeaderOps | None:
        if value is not None and any(isinstance(v, list) for v in value.set.values()):
            raise ValueError("a response header's `set` value is a string or a number")
        return value

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            compile_expression(value)
        return value

    @model_validator(mode="after")
    def _check_body(self) -> ResponseRewriteConfig:
        if self.body is not None and self.filters is not None:
            raise ValueError("give body or filters, not both")
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
        self._filters = [(compile_filter(f), f) for f in config.filters or ()]
        # Filters read the whole upstream body; the pipeline buffers it for this instance.
        self.needs_response_body = bool(self._filters)
        ops = config.headers
        self._add = [(name, Template.parse(v)) for name, v in ops.add] if ops else []
        self._set = [(name, Template.parse(v[0])) for name, v in ops.set_values()] if ops else []
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
        elif self._filters:
            # Content-Encoding stays until body_filter has decoded the body it describes.
            for name in _BODY_HEADERS:
                if name != "Content-Encoding":
                    response.headers.popall(name, None)
        for name, value in added:
            response.headers.add(name, value)
        for name, value in replaced:
            response.headers[name] = value
        for name in self._remove:
            response.headers.popall(name, None)

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if not ctx.vars.get(_MATCHED):
            return
        if self._filters:
            self._apply_filters(response)
            return
        if self._body is None:
            return
        # The upstream body is dropped unread rather than buffered: it is replaced whole.
        if response.stream is not None:
            response.stream = None
            if response.close is not None:
                await response.close()
                response.close = None
        response.body = self._body

    def _apply_filters(self, response: ProxyResponse) -> None:
        body = response.body
        if len(body) > self.config.max_resp_body_size:
            return
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            decoded = _decode(body, encoding, self.config.max_resp_body_size)
            if decoded is None:
                log.warning("response-rewrite filters skipped: cannot decode a %r body within the size limit", encoding)
                return
            body = decoded
            response.headers.popall("Content-Encoding", None)
        # surrogateescape: bytes that are not UTF-8 pass through the substitution unchanged.
        text = body.decode("utf-8", "surrogateescape")
        for pattern, item in self._filters:
            replace = item.replace
            text = pattern.sub(lambda m, r=replace: expand_groups(m, r), text, count=1 if item.scope == "once" else 0)
        response.body = text.encode("utf-8", "surrogateescape")


def _decode(body: bytes, encoding: str, limit: int) -> bytes | None:
    """A gzip or deflate body decoded (APISIX decodes gzip and brotli); None for anything else, a broken body,
    or one that would grow past `limit` (a compression bomb)."""
    if encoding in ("gzip", "x-gzip"):
        wbits = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        wbits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, or raw as some servers send it
    else:
        return None
    for bits in wbits:
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            return None
        return out
    return None
