"""cors: answer CORS preflights at the gateway and add the CORS headers to every answer, errors included."""

from __future__ import annotations

import re
from typing import ClassVar

from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import ProxyResponse, Reply

_ORIGIN = re.compile(r"^(null|[A-Za-z][A-Za-z0-9+.\-]*://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~*]+)(:[0-9]{1,5})?)$")
_HEADER_LIST = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+(\s*,\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*$")
_ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"


class CorsConfig(PluginConfig):
    # "*": any origin, no credentials; "**": echo any origin (APISIX's explicit, unsafe opt-in); else a comma list.
    allow_origins: str = Field(default="*", min_length=1)
    allow_methods: str = Field(default="*", min_length=1)
    allow_headers: str = Field(default="*", min_length=1)
    expose_headers: str | None = Field(default=None, min_length=1)
    max_age: int = Field(default=5, ge=-1)
    allow_credential: bool = False
    # Full-match regexes; when given, they alone decide (APISIX ignores allow_origins then).
    allow_origins_by_regex: list[str] | None = Field(default=None, min_length=1)
    # Which origins may read Resource Timing details (Timing-Allow-Origin); same forms as the two above.
    timing_allow_origins: str | None = Field(default=None, min_length=1)
    timing_allow_origins_by_regex: list[str] | None = Field(default=None, min_length=1)

    @field_validator("allow_origins", "timing_allow_origins")
    @classmethod
    def _check_origins(cls, value: str | None) -> str | None:
        if value is None or value in ("*", "**"):
            return value
        for origin in value.split(","):
            if not _ORIGIN.match(origin.strip()):
                raise ValueError(f"{origin.strip()!r} is not an origin like https://example.com[:port]")
        return value

    @field_validator("allow_methods")
    @classmethod
    def _check_methods(cls, value: str) -> str:
        if value not in ("*", "**") and not _HEADER_LIST.match(value):
            raise ValueError("allow_methods is '*', '**' or a comma list of methods")
        return value

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _check_headers(cls, value: str | None) -> str | None:
        if value is not None and value not in ("*", "**") and not _HEADER_LIST.match(value):
            raise ValueError("expected '*', '**' or a comma list of header names")
        return value

    @field_validator("allow_origins_by_regex", "timing_allow_origins_by_regex")
    @classmethod
    def _check_regex(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("regexes must be unique")
        for index, pattern in enumerate(value or ()):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"[{index}] is not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _credentials(self) -> CorsConfig:
        # A browser refuses `*` with credentials, so APISIX refuses the combination at load.
        stars = [
            self.allow_origins,
            self.allow_methods,
            self.allow_headers,
            self.expose_headers,
            self.timing_allow_origins,
        ]
        if self.allow_credential and "*" in stars:
            raise ValueError("you can not set '*' for other option when 'allow_credential' is true")
        return self


class Cors(Plugin[CorsConfig]):
    name: ClassVar[str] = "cors"
    priority: ClassVar[int] = 4000
    Config = CorsConfig

    def __init__(self, config: CorsConfig) -> None:
        super().__init__(config)
        self._origins = _origin_set(config.allow_origins)
        self._regexes = [re.compile(p) for p in config.allow_origins_by_regex or ()]
        self._timing_origins = _origin_set(config.timing_allow_origins or "")
        self._timing_regexes = [re.compile(p) for p in config.timing_allow_origins_by_regex or ()]

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        headers = ctx.request.headers
        # A preflight never reaches the upstream nor the authentication plugins (which run after 4000).
        if ctx.method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers:
            out: CIMultiDict[str] = CIMultiDict()
            self._apply(headers, out)
            return Reply(200, b"", out)
        return None

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        # The client's Origin, not ctx.headers: a rewrite plugin may have changed what goes upstream.
        self._apply(ctx.request.headers, response.headers)

    def _allowed_origin(self, origin: str | None) -> str | None:
        return _match_origin(origin, self.config.allow_origins, self._origins, self._regexes)

    def _apply(self, request_headers: CIMultiDictProxy[str], out: CIMultiDict[str]) -> None:
        config = self.config
        origin = request_headers.get("Origin")
        allowed = self._allowed_origin(origin)
        if allowed != "*" or self._regexes:
            # The answer depends on Origin: a shared cache must keep one copy per origin.
            _add_vary(out, "Origin")
        if config.timing_allow_origins is not None or self._timing_regexes:
            timing = _match_origin(origin, config.timing_allow_origins, self._timing_origins, self._timing_regexes)
            # Independent of the CORS answer; APISIX sends it only when it names this very origin, or is "*".
            if timing is not None and timing in ("*", origin):
                out["Timing-Allow-Origin"] = timing
        if allowed is None:
            return
        out["Access-Control-Allow-Origin"] = allowed
        out["Access-Control-Allow-Methods"] = _ALL_METHODS if config.allow_methods == "**" else config.allow_methods
        if config.allow_headers == "**":
            requested = request_headers.get("Access-Control-Request-Headers")
            if requested:
                out["Access-Control-Allow-Headers"] = requested
        else:
            out["Access-Control-Allow-Headers"] = config.allow_headers
        out["Access-Control-Max-Age"] = str(config.max_age)
        if config.expose_headers is not None:
            out["Access-Control-Expose-Headers"] = config.expose_headers
        if config.allow_credential:
            out["Access-Control-Allow-Credentials"] = "true"


def _origin_set(origins: str) -> frozenset[str]:
    if origins in ("", "*", "**"):
        return frozenset()
    return frozenset(o.strip() for o in origins.split(","))


def _match_origin(
    origin: str | None, origins: str | None, listed: frozenset[str], regexes: list[re.Pattern[str]]
) -> str | None:
    """What to answer for this Origin: the origin itself, "*", or None when it is not allowed."""
    if regexes:
        # Full matches, where APISIX searches: `https://.*\.example\.com` must not let in
        # https://x.example.com.evil.net.
        if origin is not None and any(p.fullmatch(origin) for p in regexes):
            return origin
        return None
    if origins == "*":
        return "*"
    if origins == "**":
        return origin or "*"
    return origin if origin in listed else None


def _add_vary(headers: CIMultiDict[str], name: str) -> None:
    tokens = {t.strip().lower() for value in headers.getall("Vary", ()) for t in value.split(",")}
    if name.lower() not in tokens and "*" not in tokens:
        headers.add("Vary", name)
