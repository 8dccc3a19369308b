"""redirect: answer with a redirect (Location) at the gateway: to https, to a fixed uri, or by regex."""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.proxy_rewrite import expand_groups
from gateway.plugins.variables import Template, check_template, resolve_var
from gateway.responses import Reply

_CTL = re.compile(r"[\x00-\x1f\x7f]")
# encode_uri escapes what may not stand raw in a URI and keeps the reserved characters and escapes.
_URI_SAFE = ":/?#[]@!$&'()*+,;=%-._~"


class RedirectConfig(PluginConfig):
    http_to_https: bool = False
    uri: str | None = Field(default=None, min_length=2)
    regex_uri: list[str] | None = Field(default=None, min_length=2, max_length=2)  # [pattern, replacement]
    ret_code: int = Field(default=302, ge=200, le=599)
    encode_uri: bool = False
    append_query_string: bool = False

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @field_validator("regex_uri")
    @classmethod
    def _check_regex(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            try:
                re.compile(value[0])
            except re.error as exc:
                raise ValueError(f"regex_uri[0] is not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_target(self) -> RedirectConfig:
        given = [self.http_to_https, self.uri is not None, self.regex_uri is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of http_to_https, uri and regex_uri")
        if self.http_to_https and self.append_query_string:
            raise ValueError("only one of `http_to_https` and `append_query_string` can be configured")
        return self


class Redirect(Plugin[RedirectConfig]):
    name: ClassVar[str] = "redirect"
    priority: ClassVar[int] = 900
    Config = RedirectConfig

    def __init__(self, config: RedirectConfig) -> None:
        super().__init__(config)
        self._uri = Template.parse(config.uri) if config.uri is not None else None
        self._regex = re.compile(config.regex_uri[0]) if config.regex_uri is not None else None

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        status = config.ret_code
        if config.http_to_https:
            # X-Forwarded-Proto counts, as in APISIX: behind a proxy that ends TLS, the request that reached
            # the client's proxy was HTTPS, and redirecting it again would loop. A client that sets it only
            # spares itself the redirect.
            forwarded = ctx.request.headers.get("X-Forwarded-Proto")
            scheme = forwarded.split(",")[0].strip().lower() if forwarded else ctx.request.scheme
            if scheme == "https":
                return None
            # The normalised target, so the Location never carries what routing did not see.
            target = ctx.path + (f"?{ctx.query}" if ctx.query else "")
            location = f"https://{resolve_var('host', ctx)}{target}"
            # APISIX: 301 keeps a GET a GET; 308 keeps the method and body of anything else.
            status = 301 if ctx.method in ("GET", "HEAD") else 308
        elif self._uri is not None:
            location = self._uri.render(ctx)
        else:
            assert self._regex is not None and config.regex_uri is not None
            match = self._regex.search(ctx.path)
            if match is None:
                return None
            replacement = config.regex_uri[1]
            location = self._regex.sub(lambda m: expand_groups(m, replacement), ctx.path, count=1)
        if config.encode_uri:
            location = quote(location, safe=_URI_SAFE)
        if config.append_query_string and ctx.query:
            location += ("&" if "?" in location else "?") + ctx.query
        if _CTL.search(location):
            raise GatewayError.bad_request("the redirect target would have a control character")
        return Reply(status, b"", {"Location": location})
