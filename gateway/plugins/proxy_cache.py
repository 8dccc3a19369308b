"""proxy-cache: keep upstream answers in a bounded in-memory LRU and answer repeats from it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from multidict import CIMultiDict
from pydantic import Field, field_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.variables import Template, check_template
from gateway.responses import ProxyResponse, Reply

STATUS_HEADERS = ("Cache-Status", "Apisix-Cache-Status")  # the name, and APISIX's for its users
_STATE = "proxy-cache.state"  # ctx.vars: (status word, key) once access has looked the request up
_PENDING = "proxy-cache.pending"  # ctx.vars: what header_filter decided to store, for body_filter
# Headers that describe one hop or one answer, never replayed from the cache.
_NOT_STORED = frozenset(
    {
        "age",
        "content-length",
        "transfer-encoding",
        "cache-status",
        "apisix-cache-status",
        "connection",
        "keep-alive",
        "date",
    }
)
_NO_STORE_DIRECTIVES = ("no-store", "private", "no-cache")

clock = time.monotonic  # module level so tests can move time


class ProxyCacheConfig(PluginConfig):
    cache_strategy: Literal["memory"] = "memory"
    cache_zone: str = Field(default="memory_cache", min_length=1, max_length=100)  # a label: each route has its own
    cache_key: list[str] = Field(default_factory=lambda: ["$host", "$request_uri"], min_length=1)
    cache_method: list[Literal["GET", "POST", "HEAD"]] = Field(default_factory=lambda: ["GET", "HEAD"], min_length=1)
    cache_http_status: list[int] = Field(default_factory=lambda: [200, 301, 404], min_length=1)
    cache_ttl: int = Field(default=300, ge=1)  # seconds, when the upstream's Cache-Control gives no max-age
    hide_cache_headers: bool = False  # drop Cache-Control and Expires from answers
    cache_control: bool = False  # also honour a request's max-age and only-if-cached
    cache_bypass: list[str] | None = Field(default=None, min_length=1)  # any non-empty, non-"0": not looked up
    no_cache: list[str] | None = Field(default=None, min_length=1)  # any non-empty, non-"0": not stored
    # protogate's bounds on memory (APISIX sizes a shared zone instead).
    max_entries: int = Field(default=1000, ge=1)
    max_body_size: int = Field(default=1024 * 1024, ge=0)
    max_memory: int = Field(default=64 * 1024 * 1024, ge=0)

    @field_validator("cache_strategy", mode="before")
    @classmethod
    def _memory_only(cls, value: Any) -> Any:
        if value == "disk":
            raise ValueError("only the 'memory' cache_strategy is available")
        return value

    @field_validator("cache_key", "cache_bypass", "no_cache")
    @classmethod
    def _check_vars(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if item == "$request_method":
                raise ValueError("cache_key variable $request_method unsupported")
            check_template(item)
        return value

    @field_validator("cache_http_status")
    @classmethod
    def _check_statuses(cls, value: list[int]) -> list[int]:
        if any(status < 200 or status > 599 for status in value):
            raise ValueError("statuses are 200-599")
        if len(set(value)) != len(value):
            raise ValueError("statuses must be unique")
        return value

    @field_validator("cache_method")
    @classmethod
    def _unique_methods(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("methods must be unique")
        return value


@dataclass(frozen=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored: float
    ttl: float

    def age(self, now: float) -> float:
        return now - self.stored


class MemoryCache:
    """An LRU bounded by entry count and by the bytes of the bodies it holds."""

    def __init__(self, max_entries: int, max_memory: int) -> None:
        self.max_entries = max_entries
        self.max_memory = max_memory
        self.entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.size = 0

    def get(self, key: tuple[str, str]) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str], entry: Entry) -> None:
        self.pop(key)
        if len(entry.body) > self.max_memory:
            return
        self.entries[key] = entry
        self.size += len(entry.body)
        while len(self.entries) > self.max_entries or self.size > self.max_memory:
            _, evicted = self.entries.popitem(last=False)
            self.size -= len(evicted.body)

    def pop(self, key: tuple[str, str]) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(old.body)


class ProxyCache(Plugin[ProxyCacheConfig]):
    name: ClassVar[str] = "proxy-cache"
    priority: ClassVar[int] = 1085
    Config = ProxyCacheConfig

    def __init__(self, config: ProxyCacheConfig) -> None:
        super().__init__(config)
        self.cache = MemoryCache(config.max_entries, config.max_memory)
        self._key = [Template.parse(item) for item in config.cache_key]
        self._bypass = [Template.parse(item) for item in config.cache_bypass or ()]
        self._no_cache = [Template.parse(item) for item in config.no_cache or ()]

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        if ctx.method not in config.cache_method:
            return None
        key = self._cache_key(ctx)
        request_cc = _directives(ctx.headers.getall("Cache-Control", []))
        pragma = ctx.headers.get("Pragma", "").lower()
        if _any_set(self._bypass, ctx) or "no-cache" in request_cc or "no-store" in request_cc or "no-cache" in pragma:
            ctx.vars[_STATE] = ("BYPASS", key)
            return None
        entry = self.cache.get(key)
        now = clock()
        state = "MISS"
        if entry is not None:
            limit = entry.ttl
            if config.cache_control and request_cc.get("max-age", "").isdigit():
                limit = min(limit, int(request_cc["max-age"]))
            if entry.age(now) < limit:
                headers = CIMultiDict(entry.headers)
                headers["Age"] = str(int(entry.age(now)))
                for name in STATUS_HEADERS:
                    headers[name] = "HIT"
                ctx.vars[_STATE] = ("HIT", key)
                return Reply(entry.status, entry.body, headers)
            state = "EXPIRED"
        if config.cache_control and "only-if-cached" in request_cc:
            raise GatewayError.gateway_timeout("the answer is not in the cache (only-if-cached)")
        ctx.vars[_STATE] = (state, key)
        return None

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        looked_up = ctx.vars.get(_STATE)
        if looked_up is None:
            return
        state, key = looked_up
        if self.config.hide_cache_headers:
            for name in ("Cache-Control", "Expires"):
                response.headers.popall(name, None)
        if state == "HIT" and response.source == "plugin":
            return
        ttl = self._storable(ctx, response)
        # Snapshot before the status headers go on: they describe this answer, not the stored one.
        if ttl is not None:
            headers = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _NOT_STORED)
            ctx.vars[_PENDING] = (key, response.status, headers, ttl)
        for name in STATUS_HEADERS:
            response.headers[name] = state

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        pending = ctx.vars.pop(_PENDING, None)
        if pending is None:
            return
        key, status, headers, ttl = pending
        limit = self.config.max_body_size

        def store(body: bytes) -> None:
            self.cache.put(key, Entry(status, headers, body, clock(), ttl))

        if response.stream is None:
            if len(response.body) <= limit:
                store(response.body)
            return
        # Tee the stream: the client is not held up, and an answer is stored only once it arrived whole.
        response.stream = _tee(response.stream, limit, store)

    def _cache_key(self, ctx: RequestContext) -> tuple[str, str]:
        # HEAD is answered from GET's entry (nginx's proxy_cache_convert_head); POST keeps its own.
        method = "GET" if ctx.method in ("GET", "HEAD") else ctx.method
        return method, "\x00".join(template.render(ctx) for template in self._key)

    def _storable(self, ctx: RequestContext, response: ProxyResponse) -> float | None:
        """The ttl to store this answer for, or None when it must not be stored."""
        config = self.config
        if response.source != "upstream" or ctx.method == "HEAD":  # a HEAD answer has no body to keep
            return None
        if response.status not in config.cache_http_status or _any_set(self._no_cache, ctx):
            return None
        headers = response.headers
        if "Set-Cookie" in headers:  # one client's cookie must never be handed to another
            return None
        vary = {t.strip().lower() for v in headers.getall("Vary", ()) for t in v.split(",") if t.strip()}
        if vary - {"origin"}:  # keys do not vary; Origin only drives the CORS headers, recomputed per answer
            return None
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > config.max_body_size:
            return None
        cc = _directives(headers.getall("Cache-Control", []))
        if any(d in cc for d in _NO_STORE_DIRECTIVES):
            return None
        # RFC 9111 3.5: an authorised request's answer is shared only when the upstream says it may be.
        if "Authorization" in ctx.request.headers and not {"public", "s-maxage", "must-revalidate"} & cc.keys():
            return None
        max_age = cc.get("s-maxage") or cc.get("max-age")
        if max_age is not None:
            if not max_age.isdigit() or int(max_age) == 0:
                return None
            return float(int(max_age))
        return float(config.cache_ttl)


async def _tee(stream: AsyncIterator[bytes], limit: int, store: Any) -> AsyncIterator[bytes]:
    chunks: list[bytes] = []
    size = 0
    keep = True
    async for chunk in stream:
        if keep:
            size += len(chunk)
            if size > limit:
                keep, chunks = False, []
            else:
                chunks.append(chunk)
        yield chunk
    if keep:
        store(b"".join(chunks))


def _directives(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                out[name.lower()] = arg.strip().strip('"')
    return out


def _any_set(templates: list[Template], ctx: RequestContext) -> bool:
    # APISIX (nginx's proxy_no_cache): a value that is neither empty nor "0" counts.
    return any(template.render(ctx) not in ("", "0") for template in templates)
