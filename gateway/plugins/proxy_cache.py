"""proxy-cache: keep upstream answers in a bounded in-memory LRU and answer repeats from it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
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
# A cache_key with one of these already separates users: consumer_isolation then adds nothing (APISIX).
_IDENTITY_VARS = frozenset({"$consumer_name", "$consumer_group_id", "$remote_user", "$http_authorization"})
MAX_VARIANTS = 64  # answers kept per key for different values of the headers named by Vary (APISIX's bound)

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
    consumer_isolation: bool = True  # each consumer its own entries (the key is prefixed with its name)
    cache_set_cookie: bool = False  # store answers that carry Set-Cookie (they are one client's)
    # protogate's bounds on memory (APISIX sizes a shared zone instead).
    max_entries: int = Field(default=1000, ge=1)
    max_body_size: int = Field(default=1024 * 1024, ge=0)
    max_memory: int = Field(default=64 * 1024 * 1024, ge=0)
    # APISIX's name for max_body_size (its default is 64 MiB; ours stays 1 MiB unless this is given).
    max_resp_body_size: int | None = Field(default=None, ge=1)

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

    @property
    def body_limit(self) -> int:
        return self.max_resp_body_size if self.max_resp_body_size is not None else self.max_body_size


Key = tuple[str, str]  # (method, rendered cache key)


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
    """An LRU bounded by entry count and by the bytes of the bodies it holds.

    A key's answers that carried `Vary` are kept per value of the named request headers (its variants, at
    most MAX_VARIANTS); `vary` remembers which headers a key's stored answers vary on.
    """

    def __init__(self, max_entries: int, max_memory: int) -> None:
        self.max_entries = max_entries
        self.max_memory = max_memory
        self.entries: OrderedDict[tuple[Key, str], Entry] = OrderedDict()
        self.vary: dict[Key, tuple[str, ...]] = {}
        self.variants: dict[Key, OrderedDict[str, None]] = {}
        self.size = 0

    def get(self, key: Key, headers: Any = None) -> Entry | None:
        slot = (key, _signature(self.vary.get(key, ()), headers))
        entry = self.entries.get(slot)
        if entry is not None:
            self.entries.move_to_end(slot)
        return entry

    def put(self, key: Key, entry: Entry, vary: tuple[str, ...] = (), headers: Any = None) -> None:
        if self.vary.get(key, ()) != vary:
            # Variants made over other headers cannot be found any more: drop them.
            self.purge(key)
        if len(entry.body) > self.max_memory:
            return
        signature = _signature(vary, headers)
        self._drop((key, signature))
        if vary:
            self.vary[key] = vary
        variants = self.variants.setdefault(key, OrderedDict())
        variants[signature] = None
        while len(variants) > MAX_VARIANTS:
            self._drop((key, next(iter(variants))))
        self.entries[(key, signature)] = entry
        self.size += len(entry.body)
        while len(self.entries) > self.max_entries or self.size > self.max_memory:
            self._drop(next(iter(self.entries)))

    def purge(self, key: Key) -> bool:
        """Forget every answer stored for `key`; whether there was one (PURGE's 200 or 404)."""
        variants = self.variants.get(key)
        found = bool(variants)
        for signature in list(variants or ()):
            self._drop((key, signature))
        self.vary.pop(key, None)
        self.variants.pop(key, None)
        return found

    def pop(self, key: Key) -> None:
        self.purge(key)

    def _drop(self, slot: tuple[Key, str]) -> None:
        old = self.entries.pop(slot, None)
        if old is not None:
            self.size -= len(old.body)
        key, signature = slot
        variants = self.variants.get(key)
        if variants is not None:
            variants.pop(signature, None)
            if not variants:
                del self.variants[key]
                self.vary.pop(key, None)


def _signature(vary: tuple[str, ...], headers: Any) -> str:
    if not vary or headers is None:
        return ""
    return "\x00".join(",".join(headers.getall(name, ())) for name in vary)


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
        self._isolate = config.consumer_isolation and not _IDENTITY_VARS & set(config.cache_key)
        self._identity_in_key = bool(_IDENTITY_VARS & set(config.cache_key))

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        if ctx.method == "PURGE":
            # APISIX: PURGE drops the key's answers, 200 when there were some, 404 when not. Guard it with
            # consumer-restriction's allowed_by_methods or ip-restriction where that matters.
            key = self._cache_key(ctx)
            found = self.cache.purge(("GET", key[1]))
            found = self.cache.purge(("POST", key[1])) or found
            return Reply(200 if found else 404, b"")
        if ctx.method not in config.cache_method:
            ctx.vars[_STATE] = ("MISS", None)  # APISIX says MISS, and nothing is stored
            return None
        key = self._cache_key(ctx)
        # The request's own Cache-Control counts only with cache_control (APISIX): otherwise a client
        # could not make the upstream do the work the cache exists to save.
        request_cc = _directives(ctx.headers.getall("Cache-Control", [])) if config.cache_control else {}
        if _any_set(self._bypass, ctx) or "no-cache" in request_cc or "no-store" in request_cc:
            ctx.vars[_STATE] = ("BYPASS", None)
            return None
        entry = self.cache.get(key, ctx.headers)
        now = clock()
        state = "MISS"
        if entry is not None:
            age = entry.age(now)
            if age >= entry.ttl:
                state = "EXPIRED"
            elif _too_old_for(request_cc, age, entry.ttl):
                state = "STALE"
            else:
                headers = CIMultiDict(entry.headers)
                headers["Age"] = str(int(age))
                for name in STATUS_HEADERS:
                    headers[name] = "HIT"
                ctx.vars[_STATE] = ("HIT", key)
                return Reply(entry.status, entry.body, headers)
        if entry is None and "only-if-cached" in request_cc:
            ctx.vars[_STATE] = ("MISS", None)
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
        stored = self._storable(ctx, response) if key is not None else None
        # Snapshot before the status headers go on: they describe this answer, not the stored one.
        if stored is not None:
            ttl, vary = stored
            headers = tuple((k, v) for k, v in response.headers.items() if k.lower() not in _NOT_STORED)
            ctx.vars[_PENDING] = (key, response.status, headers, ttl, vary)
        for name in STATUS_HEADERS:
            response.headers[name] = state

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        pending = ctx.vars.pop(_PENDING, None)
        if pending is None:
            return
        key, status, headers, ttl, vary = pending
        limit = self.config.body_limit
        request_headers = ctx.headers

        def store(body: bytes) -> None:
            self.cache.put(key, Entry(status, headers, body, clock(), ttl), vary, request_headers)

        if response.stream is None:
            if len(response.body) <= limit:
                store(response.body)
            return
        # Tee the stream: the client is not held up, and an answer is stored only once it arrived whole.
        response.stream = _tee(response.stream, limit, store)

    def _cache_key(self, ctx: RequestContext) -> Key:
        # HEAD is answered from GET's entry (nginx's proxy_cache_convert_head); POST keeps its own.
        method = "POST" if ctx.method == "POST" else "GET"
        value = "\x00".join(template.render(ctx) for template in self._key)
        if self._isolate and ctx.consumer is not None:
            # A control character cannot be in a username, so the prefix cannot be forged by a key.
            value = f"{ctx.consumer.username}\x01{value}"
        return method, value

    def _storable(self, ctx: RequestContext, response: ProxyResponse) -> tuple[float, tuple[str, ...]] | None:
        """(ttl, the request headers the answer varies on) to store this answer, or None when it must not be."""
        config = self.config
        if response.source != "upstream" or ctx.method == "HEAD":  # a HEAD answer has no body to keep
            return None
        if response.status not in config.cache_http_status or _any_set(self._no_cache, ctx):
            return None
        headers = response.headers
        if "Set-Cookie" in headers and not config.cache_set_cookie:  # one client's cookie, not for others
            return None
        vary = sorted({t.strip().lower() for v in headers.getall("Vary", ()) for t in v.split(",") if t.strip()})
        if "*" in vary:  # RFC 9111 4.1: never reusable
            return None
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > config.body_limit:
            return None
        cc = _directives(headers.getall("Cache-Control", []))
        if any(d in cc for d in _NO_STORE_DIRECTIVES):
            return None
        # RFC 9111 3.5: an authorised request's answer is shared only when the upstream says it may be, or
        # when the key itself tells users apart.
        separated = self._identity_in_key or (self._isolate and ctx.consumer is not None)
        shareable = {"public", "s-maxage", "must-revalidate"} & cc.keys()
        if "Authorization" in ctx.request.headers and not separated and not shareable:
            return None
        if not config.cache_control:
            return float(config.cache_ttl), tuple(vary)
        # cache_control: the upstream's freshness decides (APISIX); an answer without one is not stored.
        ttl = _freshness(cc, headers.get("Expires"))
        return (ttl, tuple(vary)) if ttl > 0 else None


def _freshness(cc: dict[str, str], expires: str | None) -> float:
    max_age = cc.get("s-maxage") or cc.get("max-age")
    if max_age is not None:
        return float(int(max_age)) if max_age.isdigit() else 0.0
    if expires:
        try:
            when = parsedate_to_datetime(expires)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        return when.timestamp() - time.time()
    return 0.0


def _too_old_for(request_cc: dict[str, str], age: float, ttl: float) -> bool:
    """The request's max-age or min-fresh refuses this entry (with cache_control; APISIX's STALE)."""
    max_age = request_cc.get("max-age", "")
    if max_age.isdigit() and age > int(max_age):
        return True
    min_fresh = request_cc.get("min-fresh", "")
    return min_fresh.isdigit() and ttl - age < int(min_fresh)


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
