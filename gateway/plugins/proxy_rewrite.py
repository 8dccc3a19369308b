"""proxy-rewrite: change the path, query, method, host and headers of the request before it goes upstream."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.paths import normalize_path
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.variables import CAPTURES, Template, check_template
from gateway.responses import Reply

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(:[0-9]{1,5})?$")
# What may stand raw in a path (RFC 3986 pchar and "/"); a variable's value is escaped to fit it.
_PATH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Headers that describe the HTTP hop, not the call: never turned into gRPC metadata.
_NOT_METADATA = frozenset(
    {"host", "te", "content-type", "content-length", "user-agent", "connection", "transfer-encoding", "keep-alive"}
)
_GROUP = re.compile(r"\$\$|\$\{(\d+)\}|\$(\d)")

Method = Literal[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK", "UNLOCK", "PATCH",
    "TRACE",
]  # fmt: skip


class HeaderOps(PluginConfig):
    """APISIX's `headers: {add, set, remove}`; `add` keeps duplicates, values may use `$var`.

    A `set` value may be a list (proxy-rewrite): the header is replaced by one line per item.
    """

    # proxy-rewrite's header values may also use `$1`, `${2}`: the groups of the regex_uri that matched.
    captures: ClassVar[bool] = False

    add: list[tuple[str, str]] = Field(default_factory=list)
    set: dict[str, str | list[str]] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("add", mode="before")
    @classmethod
    def _add_pairs(cls, value: Any) -> Any:
        # proxy-rewrite writes `add` as a map (a list value adds one line per item); response-rewrite as
        # ["Name: value", ...]. Both are taken.
        if isinstance(value, dict):
            return [(name, scalar(item)) for name, v in value.items() for item in (v if isinstance(v, list) else [v])]
        if isinstance(value, list):
            pairs: list[Any] = []
            for item in value:
                if isinstance(item, str):
                    name, colon, rest = item.partition(":")
                    if not colon:
                        raise ValueError(f"{item!r} is not 'Name: value'")
                    pairs.append((name.strip(), rest.strip()))
                else:
                    pairs.append(item)
            return pairs
        return value

    @field_validator("set", mode="before")
    @classmethod
    def _set_scalars(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {name: [scalar(i) for i in v] if isinstance(v, list) else scalar(v) for name, v in value.items()}

    @model_validator(mode="after")
    def _check(self) -> HeaderOps:
        set_pairs = [(name, item) for name, v in self.set.items() for item in (v if isinstance(v, list) else [v])]
        for name, v in self.set.items():
            if isinstance(v, list) and not v:
                raise ValueError(f"header {name!r}: a list of values needs at least one")
        for name, value in [*self.add, *set_pairs, *((n, "") for n in self.remove)]:
            if not _TOKEN.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if _BAD_VALUE.search(value):
                raise ValueError(f"header {name!r} has a control character in its value")
            check_template(value, captures=self.captures)
        return self

    def set_values(self) -> list[tuple[str, list[str]]]:
        """`set` with every value as a list."""
        return [(name, v if isinstance(v, list) else [v]) for name, v in self.set.items()]

    @property
    def empty(self) -> bool:
        return not (self.add or self.set or self.remove)


class RequestHeaderOps(HeaderOps):
    captures: ClassVar[bool] = True


def header_ops(value: Any) -> Any:
    """APISIX's older flat form `{name: value}` is a `set`, and an empty value removes the header."""
    if not isinstance(value, dict) or not value:
        return value
    if set(value) <= {"add", "set", "remove"} and all(isinstance(v, dict | list) for v in value.values()):
        return value
    return {
        "set": {name: v for name, v in value.items() if v != ""},
        "remove": [name for name, v in value.items() if v == ""],
    }


def scalar(value: Any) -> Any:
    # APISIX takes numbers as header values.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class ProxyRewriteConfig(PluginConfig):
    uri: str | None = Field(default=None, min_length=1, max_length=4096)
    # [pattern, replacement, pattern, replacement, ...]: the first pattern that matches the path wins.
    regex_uri: list[str] | None = Field(default=None, min_length=2)
    method: Method | None = None
    host: str | None = Field(default=None, min_length=1, max_length=255)
    headers: RequestHeaderOps | None = None
    # APISIX's escape hatch that sends the raw request target upstream. Refused when true: the upstream
    # always gets the normalised path that routing and authorisation saw (THREATS 9).
    use_real_request_uri_unsafe: bool = False

    @field_validator("headers", mode="before")
    @classmethod
    def _flat_headers(cls, value: Any) -> Any:
        return header_ops(value)

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("/", "$")):
                raise ValueError("uri must start with '/' (or a $variable)")
            check_template(value)
        return value

    @field_validator("regex_uri")
    @classmethod
    def _check_regex(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) % 2:
            raise ValueError("regex_uri takes [pattern, replacement] pairs: an even number of strings")
        for index in range(0, len(value), 2):
            try:
                re.compile(value[index])
            except re.error as exc:
                raise ValueError(f"regex_uri[{index}] is not a valid regex: {exc}") from None
        return value

    @field_validator("use_real_request_uri_unsafe")
    @classmethod
    def _never_unsafe(cls, value: bool) -> bool:
        if value:
            raise ValueError("not supported: the upstream always gets the normalised path routing saw")
        return value

    @model_validator(mode="after")
    def _something(self) -> ProxyRewriteConfig:
        # APISIX's minProperties: an empty proxy-rewrite is a mistake, not a no-op.
        if not (self.uri or self.regex_uri or self.method or self.host or self.headers):
            raise ValueError("give at least one of uri, regex_uri, method, host and headers")
        return self

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.match(value):
            raise ValueError(f"host {value!r} is not a host name or address with an optional port")
        return value


class ProxyRewrite(Plugin[ProxyRewriteConfig]):
    name: ClassVar[str] = "proxy-rewrite"
    priority: ClassVar[int] = 1008
    Config = ProxyRewriteConfig

    def __init__(self, config: ProxyRewriteConfig) -> None:
        super().__init__(config)
        self._uri = Template.parse(config.uri) if config.uri is not None else None
        pairs = config.regex_uri or []
        self._regex = [(re.compile(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
        ops = config.headers
        self._add = [(name, Template.parse(v)) for name, v in ops.add] if ops else []
        self._set = [(name, [Template.parse(v) for v in values]) for name, values in ops.set_values()] if ops else []
        self._remove = list(ops.remove) if ops else []

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        # uri wins over regex_uri, as in APISIX.
        target: str | None = None
        if self._uri is not None:
            target = self._uri.render(ctx, escape=_escape_value)
        elif self._regex:
            for pattern, replacement in self._regex:
                match = pattern.search(ctx.path)
                if match is not None:
                    # Header values read its groups as `$1` (APISIX's proxy_rewrite_regex_uri_captures).
                    ctx.vars[CAPTURES] = match
                    target = pattern.sub(lambda m, r=replacement: expand_groups(m, r), ctx.path, count=1)
                    break
        if target is not None:
            _set_target(ctx, target)
        if config.host is not None:
            ctx.headers["Host"] = config.host
        # Header values see the request as rewritten above; add, then set, then remove (APISIX's order).
        for name, template in self._add:
            add_request_header(ctx, name, checked_header_value(name, template.render(ctx)))
        for name, templates in self._set:
            values = [checked_header_value(name, t.render(ctx)) for t in templates]
            set_request_header(ctx, name, values[0])
            for value in values[1:]:
                add_request_header(ctx, name, value)
        for name in self._remove:
            remove_request_header(ctx, name)
        # The method last, as in APISIX: `$request_method` in a header value is still the client's.
        if config.method is not None:
            ctx.method = config.method
        return None


def _as_metadata(name: str) -> bool:
    lowered = name.lower()
    return lowered not in _NOT_METADATA and not lowered.startswith("grpc-") and not lowered.endswith("-bin")


def set_request_header(ctx: RequestContext, name: str, value: str) -> None:
    """Set a header going upstream; a gRPC upstream gets it as metadata (the operator asserts it)."""
    if _as_metadata(name):
        ctx.set_upstream_header(name, value)
    else:
        ctx.headers[name] = value


def add_request_header(ctx: RequestContext, name: str, value: str) -> None:
    ctx.headers.add(name, value)
    if _as_metadata(name):
        ctx.upstream_metadata.append((name.lower(), value))


def remove_request_header(ctx: RequestContext, name: str) -> None:
    ctx.headers.popall(name, None)
    lowered = name.lower()
    ctx.upstream_metadata = [(k, v) for k, v in ctx.upstream_metadata if k != lowered]


def checked_header_value(name: str, value: str) -> str:
    # A cookie value can carry a decoded control character; never let one reach a header.
    if _BAD_VALUE.search(value):
        raise GatewayError.bad_request(f"header {name} would have a control character")
    return value


def expand_groups(match: re.Match[str], replacement: str) -> str:
    """ngx.re.sub's replacement syntax: `$1`, `${12}`, `$$` for a dollar sign."""

    def group(g: re.Match[str]) -> str:
        if g.group(0) == "$$":
            return "$"
        index = int(g.group(1) or g.group(2))
        if index > (match.re.groups or 0):
            return ""
        return match.group(index) or ""

    return _GROUP.sub(group, replacement)


def _escape_value(value: str) -> str:
    """A variable's value made safe for a path: kept escapes stay, everything else not allowed raw is escaped.

    `?` and `#` are escaped too, so a client-supplied value can never start a query or a fragment.
    """
    out: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "%" and _ESCAPE.match(value, index):
            out.append(value[index : index + 3])
            index += 3
            continue
        out.append(char if char in _PATH_SAFE else "".join(f"%{b:02X}" for b in char.encode()))
        index += 1
    return "".join(out)


def _set_target(ctx: RequestContext, target: str) -> None:
    """Apply a rewritten `path[?query]`: the path normalised; a query joins the client's (APISIX's rule)."""
    path, question, query = target.partition("?")
    if not path.startswith("/"):
        path = "/" + path
    # Normalising would resolve `..` and silently leave the prefix the rewrite meant to keep.
    for segment in path.split("/"):
        if segment.replace("%2e", ".").replace("%2E", ".") in (".", ".."):
            raise GatewayError.bad_request("the rewritten path has a '.' or '..' segment")
    ctx.path = normalize_path(path)
    if question:
        ctx.query = f"{query}&{ctx.query}" if ctx.query and query else (query or ctx.query)
